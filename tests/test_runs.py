"""Run directories (modelyard.runs): runs that overlap keep to their own files, and the stable paths hold the
run that published last, whole. Real Fashion-MNIST through the real fetch, validate and prepare stages, in two
processes at once; the concurrent deployment runs themselves are in tests/infra/test_stack.py."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from helpers.config import small_config
from helpers.runs import data_stages_then_publish
from modelyard import stages
from modelyard.paths import TaskPaths
from modelyard.runs import open_run, prune, published_paths, run_config, runs_root
from modelyard.runtime import process_owner

pytestmark = pytest.mark.integration


def _tree(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_two_runs_at_once_keep_to_their_own_directories_and_the_last_to_publish_is_what_stays(
        tmp_path, fashion_mnist_dir):
    raw = fashion_mnist_dir.parent / "raw" / "fashion_mnist"
    raw_before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    cfgs = {"first": small_config(tmp_path, data={"train_limit": 600, "test_limit": 200}),
            "second": small_config(tmp_path, data={"train_limit": 900, "test_limit": 300})}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(2, mp_context=ctx) as pool:
        barrier = manager.Barrier(2)
        futures = {label: pool.submit(data_stages_then_publish, cfg.model_dump_json(by_alias=True), label, barrier)
                   for label, cfg in cfgs.items()}
        run_dirs = {label: Path(f.result(timeout=600)) for label, f in futures.items()}
    stable = cfgs["first"]
    latest = (runs_root(stable) / "latest").resolve()
    assert latest in {d.resolve() for d in run_dirs.values()}
    last = next(label for label, d in run_dirs.items() if d.resolve() == latest)
    for label, run_dir in run_dirs.items():  # each run's own cut, untouched by the other
        doc = json.loads((run_dir / "run.json").read_text())
        assert doc["status"] == "succeeded" and doc["published_at"], doc
        limits = {"first": "train_limit=600\ntest_limit=200\n", "second": "train_limit=900\ntest_limit=300\n"}[label]
        assert (TaskPaths.of(run_config(stable, run_dir)).dataset_dir / "limits.txt").read_text() == limits
    for src, dst in published_paths(run_config(cfgs[last], run_dirs[last]), stable):  # the last one, whole
        if src.exists():
            assert _tree(dst) == _tree(src), dst
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == raw_before  # one shared raw copy, untouched
    leftovers = [p for dst in TaskPaths.of(stable).published() for p in dst.parent.glob(".*")
                 if ".publish-" in p.name or ".old-" in p.name]
    assert not leftovers  # no staging copy or swapped-out directory stays behind


def test_a_failed_run_is_recorded_as_such_and_publishes_nothing(tmp_path, fashion_mnist_dir):
    cfg = small_config(tmp_path, data={"train_limit": 600, "test_limit": 200})
    with pytest.raises(FileNotFoundError, match="run the train stage first"), open_run(cfg) as run:
        for stage in (stages.fetch, stages.validate, stages.prepare):
            stage(run.cfg)
        stages.register(run.cfg)  # nothing trained
    doc = json.loads((run.dir / "run.json").read_text())
    assert doc["status"] == "failed" and "run the train stage first" in doc["error"] and doc["finished_at"]
    assert (TaskPaths.of(run.cfg).dataset_dir / "dataset.json").is_file()  # kept, for a look at what went wrong
    assert not TaskPaths.of(cfg).dataset_dir.exists() and not TaskPaths.of(cfg).task_dir.exists()
    assert not (runs_root(cfg) / "latest").exists()


def test_pruning_keeps_the_newest_finished_runs_the_live_ones_and_latest(tmp_path):
    root = tmp_path / "runs"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = f"{process_owner().split(':')[0]}:{dead.stdout.strip()}:1.00"

    def run_dir(minute: int, status: str, owner: str = "elsewhere:1:1.00") -> Path:
        path = root / f"20261126T10{minute:02d}00Z-run{minute}"
        path.mkdir(parents=True)
        (path / "run.json").write_text(json.dumps({"status": status, "owner": owner}))
        return path

    live = run_dir(0, "running", process_owner())  # the oldest, but its process is this one
    killed = run_dir(1, "running", dead_owner)  # its process died: as good as finished
    other_host = run_dir(2, "running")  # another host's: only that host can tell
    finished = [run_dir(m, "succeeded" if m % 2 else "failed") for m in range(10, 20)]
    (root / "latest").symlink_to(finished[0].name)
    foreign = root / "20261126T100500Z-not-a-run"  # no run.json: someone else's folder, named like a run
    (foreign / "kept").mkdir(parents=True)
    removed = prune(root, keep=3)
    assert sorted(removed) == sorted([*finished[:-3][1:], killed])
    assert {p.name for p in root.iterdir()} == {"latest", foreign.name, *(d.name for d in (
        live, other_host, finished[0], *finished[-3:]))}
    assert (foreign / "kept").is_dir()


def test_a_run_starts_from_the_dataset_at_the_stable_path_when_it_is_the_cut_asked_for(tmp_path, small_dataset_dir):
    """A `dvc pull`ed (or earlier) data/<dataset> is what the run validates and trains on, not a new cut."""
    from modelyard.data.dataset import read_metadata
    from modelyard.data.fetch import _limits

    cfg = small_config(tmp_path, paths={"raw_dir": str(tmp_path / "no-raw")})  # fetching would fail
    stable = TaskPaths.of(cfg).dataset_dir
    shutil.copytree(small_dataset_dir, stable)
    (stable / "limits.txt").write_text(_limits(cfg.data))
    with open_run(cfg) as run:
        stages.fetch(run.cfg)
    assert read_metadata(TaskPaths.of(run.cfg).dataset_dir) == read_metadata(small_dataset_dir)
    assert _tree(TaskPaths.of(run.cfg).dataset_dir) == _tree(stable)
