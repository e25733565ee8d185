"""Where a run came from: the git commit and DVC content hashes of its inputs."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


def git_commit(repo_dir: str | os.PathLike[str] = ".") -> dict[str, str]:
    """HEAD commit and whether the work tree has uncommitted changes (empty when not a git checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def dvc_hash(path: str | os.PathLike[str]) -> str | None:
    """The md5 DVC records for `path` in dvc.lock (`<md5>.dir` for a directory), computed directly."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    path = Path(path)
    if not path.exists():
        return None
    odb = HashFileDB(MemoryFileSystem(), "/odb")
    _, _, obj = build(odb, str(path.resolve()), LocalFileSystem(), "md5")
    return obj.hash_info.value


def collect_lineage(inputs: dict[str, str | os.PathLike[str]], repo_dir: str | os.PathLike[str] = ".") -> dict[str, str]:
    """Tags for an MLflow run: git commit plus `dvc.md5.<name>` for each input path."""
    tags = git_commit(repo_dir)
    for name, path in inputs.items():
        try:
            value = dvc_hash(path)
        except Exception as exc:  # lineage must never fail a run; say what is missing instead
            log.warning("could not hash %s for lineage: %s", path, exc)
            value = None
        if value:
            tags[f"dvc.md5.{name}"] = value
    return tags
