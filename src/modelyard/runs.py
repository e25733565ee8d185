"""A directory of its own for each pipeline run, so runs may overlap; the stable paths show the latest success.

A flow run (or `modelyard pipeline`) works in `<artifacts_dir>/runs/<key>/`, laid out as `modelyard.paths`
lays out the stable paths:

    runs/<key>/run.json                       what ran, by which process, and how it ended
    runs/<key>/data/<dataset>/                its cut of the dataset (raw downloads stay shared under data/raw/)
    runs/<key>/<dataset>/<family>/            its validation report, split, model, evaluation, registration
    runs/<key>/<dataset>/<family>/ray/        its Ray Train checkpoints

Two runs with different parameters therefore never read or delete each other's files. When a run has
registered its model, `publish` copies its outputs to the stable paths of its task (`data/<dataset>` and
`artifacts/<dataset>/<family>/`: what `dvc repro`, `dvc metrics show` and the README read; another task's are
left alone) and points `runs/latest` at it. Publishing is serialised by a file lock, so the stable paths always hold one whole run:
the one that finished last. `dvc repro` and the single-stage CLI commands keep writing the stable paths
directly, as DVC expects.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from modelyard.config import PipelineConfig
from modelyard.paths import TaskPaths
from modelyard.runtime import owner_alive, process_owner

log = logging.getLogger(__name__)

KEEP_FINISHED = 10  # finished run directories kept (the newest); a running one is never removed


def runs_root(cfg: PipelineConfig) -> Path:
    return TaskPaths.of(cfg).runs_root


def run_config(cfg: PipelineConfig, run_dir: Path) -> PipelineConfig:
    """`cfg` with every path a run writes moved under `run_dir`; raw downloads stay where they are shared."""
    stable = TaskPaths.of(cfg)
    return cfg.with_overrides({"paths": {"data_dir": str(run_dir / "data"), "artifacts_dir": str(run_dir),
                                         "raw_dir": str(stable.raw_root.resolve())}})


def published_paths(run: PipelineConfig, stable: PipelineConfig) -> list[tuple[Path, Path]]:
    """(in the run directory, stable path) for everything `publish` copies."""
    return list(zip(TaskPaths.of(run).published(), TaskPaths.of(stable).published()))


@dataclass
class Run:
    key: str
    dir: Path
    cfg: PipelineConfig  # the run's own paths
    stable: PipelineConfig  # the config it started from, whose paths `publish` fills
    params_path: Path | None = None  # the parameter file it started from: its DVC stages record the published run

    def publish(self) -> None:
        """Copy this run's outputs to the stable paths, point `runs/latest` here and, when the run is the one
        params.yaml describes, record it in DVC (all under the lock)."""
        from modelyard.versioning import record_in_dvc

        root = runs_root(self.stable)
        started = time.perf_counter()
        with _publish_lock(self.stable):
            for src, dst in published_paths(self.cfg, self.stable):
                if src.exists():
                    _copy_into_place(src, dst)
            latest = root / f".latest-{uuid.uuid4().hex[:8]}"
            latest.symlink_to(self.key, target_is_directory=True)
            latest.replace(root / "latest")
            recorded = record_in_dvc(self.stable, self.params_path) if self.params_path else "no parameter file"
        _update(self.dir, published_at=_now(), dvc=recorded)
        log.info("published run %s to the stable paths in %.1f s; %s", self.key, time.perf_counter() - started,
                 recorded)


@contextmanager
def open_run(cfg: PipelineConfig, *, label: str | None = None,
             params_path: str | os.PathLike[str] | None = None) -> Iterator[Run]:
    """A new run directory for `cfg` (its key: UTC start time, then `label` or a random id); `run.json`
    records how the run ended. `params_path`: the parameter file `cfg` came from, whose DVC stages record the
    published run when it is the run the file describes. Old finished run directories beyond the newest
    KEEP_FINISHED are removed."""
    root = runs_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", label or "").strip("-.")[:48] or uuid.uuid4().hex[:8]
    key = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{label}"
    try:
        (root / key).mkdir()  # exclusive: a key is never shared
    except FileExistsError:  # two runs of the same name in the same second
        key = f"{key}-{uuid.uuid4().hex[:8]}"
        (root / key).mkdir()
    run_dir = root / key
    run = Run(key=key, dir=run_dir, cfg=run_config(cfg, run_dir.resolve()), stable=cfg,
              params_path=Path(params_path) if params_path else None)
    doc = {"key": key, "status": "running", "owner": process_owner(), "started_at": _now(), "model": cfg.task_name}
    (run_dir / "run.json").write_text(json.dumps(doc, indent=2) + "\n")
    log.info("run %s works in %s", key, run_dir)
    try:
        _start_from_the_stable_data(run)
        yield run
    except BaseException as exc:
        _update(run_dir, status="failed", finished_at=_now(), error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    else:
        published = bool(_read(run_dir).get("published_at"))
        _update(run_dir, status="succeeded" if published else "finished", finished_at=_now())
    finally:
        prune(root)


def _start_from_the_stable_data(run: Run) -> None:
    """The dataset at the stable path, when it is the cut the run asks for (`dvc pull`ed, fetched before, or
    put there by hand), is the one the run uses: copied into the run directory, where fetch finds it current."""
    from modelyard.data.fetch import is_current

    stable = TaskPaths.of(run.stable).dataset_dir
    with _publish_lock(run.stable):  # not while a publish swaps it
        if is_current(stable, run.stable.data):
            shutil.copytree(stable, TaskPaths.of(run.cfg).dataset_dir, symlinks=True)
            log.info("run %s starts from the dataset in %s", run.key, stable)


def prune(root: Path, keep: int = KEEP_FINISHED) -> list[Path]:
    """Remove the finished run directories (and those of runs whose process died) beyond the newest `keep`.
    The one `latest` points at stays, and so does every directory that is not a run's (no `run.json`):
    whatever else sits in the folder is not this function's to delete."""
    latest = (root / "latest").resolve() if (root / "latest").exists() else None
    finished = []
    for run_dir in sorted((p for p in root.iterdir() if p.is_dir() and not p.is_symlink()
                           and not p.name.startswith(".") and (p / "run.json").is_file()), reverse=True):
        doc = _read(run_dir)
        if doc.get("status") != "running" or owner_alive(doc.get("owner", "")) is False:
            finished.append(run_dir)
    removed = [d for d in finished[keep:] if d.resolve() != latest]
    for run_dir in removed:
        shutil.rmtree(run_dir, ignore_errors=True)
    if removed:
        log.info("removed %d old run directories from %s", len(removed), root)
    return removed


def _publish_lock(stable: PipelineConfig):
    """The lock under which the stable paths of `stable` are written (publish) or read (a run's start)."""
    from filelock import FileLock

    return FileLock(runs_root(stable) / ".publish.lock")


def _copy_into_place(src: Path, dst: Path) -> None:
    """A copy (not a link: the stable copy may be rewritten in place by a CLI stage) swapped in atomically."""
    from modelyard.data.dataset import replace_dir

    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = dst.with_name(f".{dst.name}.publish-{uuid.uuid4().hex[:8]}")
    try:
        if src.is_dir():
            shutil.copytree(src, staging, symlinks=True)
            replace_dir(staging, dst)
        else:
            shutil.copy2(src, staging)
            staging.replace(dst)
    finally:  # left only when the copy failed
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)


def _read(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def _update(run_dir: Path, **fields) -> None:
    path = run_dir / "run.json"
    tmp = path.with_name(f".run.json.{os.getpid()}")
    tmp.write_text(json.dumps(_read(run_dir) | fields, indent=2) + "\n")
    tmp.replace(path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
