"""A pipeline run recorded in DVC: what a flow run (or `modelyard pipeline`) published is committed to the DVC
stages that describe it, so `dvc status` stays clean after a run started from the Prefect UI, and `dvc push`
can store what it produced.

Only a run of the very parameters params.yaml describes is recorded (dvc.lock would otherwise claim outputs for
parameters that did not make them); another task's run, or one with parameters edited in the form, keeps its
published outputs in its own task directory, and `dvc status` says those stages' outputs changed when they are
params.yaml's.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from modelyard.config import PipelineConfig, load_config
from modelyard.paths import TaskPaths

log = logging.getLogger(__name__)

STAGES = ("fetch", "validate", "prepare", "train", "evaluate", "register")


def why_not_recorded(cfg: PipelineConfig, params_path: str | os.PathLike[str]) -> str | None:
    """Why the published outputs of `cfg` are not DVC's to record (None: they are)."""
    root = Path(params_path).resolve().parent
    if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        return f"{root} is not a DVC project"
    described = load_config(params_path)
    if described.model_dump() != cfg.model_dump():
        return f"the run's parameters are not the ones {Path(params_path).name} describes"
    expected = TaskPaths.of(load_config(params_path, {"paths": {"data_dir": str(root / "data"),
                                                                 "artifacts_dir": str(root / "artifacts")}}))
    if TaskPaths.of(cfg).task_dir.resolve() != expected.task_dir or TaskPaths.of(cfg).dataset_dir.resolve() != \
            expected.dataset_dir:
        return "the run published outside the paths dvc.yaml names"
    return None


def record_in_dvc(cfg: PipelineConfig, params_path: str | os.PathLike[str]) -> str:
    """`dvc commit` the stages whose outputs the run of `cfg` published, when they are params.yaml's; returns what
    was done, for the log."""
    reason = why_not_recorded(cfg, params_path)
    if reason:
        return f"not recorded in DVC: {reason}"
    if _dvc() is None:
        return "not recorded in DVC: no dvc executable beside this Python or on PATH"
    root = Path(params_path).resolve().parent
    _run_dvc(["commit", "--force", *STAGES], root)
    return f"recorded in DVC: dvc commit of {', '.join(STAGES)} in {root}"


def add_to_dvc(path: str | os.PathLike[str]) -> dict[str, str]:
    """`dvc add` a data directory in the DVC project it lies in (the nearest directory above with `.dvc/`), so
    its contents are in the cache and its `.dvc` file names them; `dvc push` stores them on the remote. Returns
    what was done: {"status": "added", "dvc_file", "md5"} or {"status": "not_added", "reason"}."""
    import yaml

    path = Path(path).resolve()
    root = next((p for p in path.parents if (p / ".dvc").is_dir()), None)
    if root is None:
        return {"status": "not_added", "reason": f"{path} is in no DVC project"}
    if _dvc() is None:
        return {"status": "not_added", "reason": "no dvc executable beside this Python or on PATH"}
    _run_dvc(["add", str(path.relative_to(root))], root)
    dvc_file = path.with_name(path.name + ".dvc")
    md5 = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    log.info("dvc add %s: %s", path, md5)
    return {"status": "added", "dvc_file": str(dvc_file), "md5": md5}


def _dvc() -> str | None:
    """The dvc executable beside this Python (the project's environment), else on PATH."""
    return shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")


def _run_dvc(args: list[str], root: Path) -> None:
    proc = subprocess.run([_dvc(), *args], cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {args[0]} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
