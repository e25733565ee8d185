"""Run directories (modelyard.runs): runs that overlap keep to their own files, and the stable paths hold the
run that published last, whole. Real Fashion-MNIST through the real fetch, validate and augment stages; the
concurrent deployment runs themselves are in tests/stack (`make reliability`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import small_config

from modelyard import stages
from modelyard.runs import open_run, prune, published_paths, runs_root
from modelyard.runtime import process_owner

pytestmark = pytest.mark.integration


def _data_stages(cfg) -> None:
    for stage in (stages.fetch, stages.validate, stages.augment):
        stage(cfg)


def _tree(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_overlapping_runs_keep_to_their_own_directories_and_the_last_to_publish_is_what_stays(
        tmp_path, pipeline_data_dir):
    raw = pipeline_data_dir / "raw" / "fashion_mnist"
    raw_before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    first_cfg = small_config(tmp_path, pipeline_data_dir, data={"train_limit": 600, "test_limit": 200})
    second_cfg = first_cfg.with_overrides({"data": {"train_limit": 900, "test_limit": 300}})
    with open_run(first_cfg, label="first") as first, open_run(second_cfg, label="second") as second:
        assert first.dir != second.dir and first.dir.parent == second.dir.parent == runs_root(first_cfg)
        _data_stages(first.cfg)
        _data_stages(second.cfg)  # a re-cut with other limits, while the first run still uses its data
        first_data = _tree(first.cfg.data.dataset_dir)
        assert (first.cfg.data.dataset_dir / "limits.txt").read_text() == "train_limit=600\ntest_limit=200\n"
        assert (second.cfg.data.dataset_dir / "limits.txt").read_text() == "train_limit=900\ntest_limit=300\n"
        assert not Path(first_cfg.data.dataset_dir).exists()  # nothing at the stable paths before a publish
        second.publish()
        first.publish()  # the first run finishes last: its outputs are the stable ones
        assert _tree(first.cfg.data.dataset_dir) == first_data  # the second run's publish touched nothing of it
    for src, dst in published_paths(first.cfg, first_cfg):
        if src.exists():
            assert _tree(dst) == _tree(src), dst
    assert (runs_root(first_cfg) / "latest").resolve() == first.dir.resolve()
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == raw_before  # one shared raw copy, untouched
    for run in (first, second):
        doc = json.loads((run.dir / "run.json").read_text())
        assert doc["status"] == "succeeded" and doc["owner"] == process_owner(), doc
    leftovers = [p for _, dst in published_paths(first.cfg, first_cfg) for p in dst.parent.glob(".*")
                 if ".publish-" in p.name or ".old-" in p.name]
    assert not leftovers  # no staging copy or swapped-out directory stays behind


def test_a_failed_run_is_recorded_as_such_and_publishes_nothing(tmp_path, pipeline_data_dir):
    cfg = small_config(tmp_path, pipeline_data_dir, data={"train_limit": 600, "test_limit": 200})
    with pytest.raises(FileNotFoundError, match="run the train stage first"), open_run(cfg) as run:
        _data_stages(run.cfg)
        stages.register(run.cfg)  # nothing trained
    doc = json.loads((run.dir / "run.json").read_text())
    assert doc["status"] == "failed" and "run the train stage first" in doc["error"] and doc["finished_at"]
    assert (run.cfg.data.dataset_dir / "dataset.json").is_file()  # kept, for a look at what went wrong
    assert not Path(cfg.data.dataset_dir).exists() and not Path(cfg.train.output_dir).exists()
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
    removed = prune(root, keep=3)
    assert sorted(removed) == sorted([*finished[:-3][1:], killed])
    assert {p.name for p in root.iterdir()} == {"latest", *(d.name for d in (live, other_host, finished[0],
                                                                            *finished[-3:]))}


def test_a_run_starts_from_the_dataset_at_the_stable_path_when_it_is_the_cut_asked_for(tmp_path, small_dataset_dir):
    """A `dvc pull`ed (or earlier) data/<dataset> is what the run validates and trains on, not a new cut."""
    from modelyard.data.dataset import read_metadata
    from modelyard.data.fetch import _limits

    cfg = small_config(tmp_path, tmp_path / "data")  # no raw download at all: fetching would fail
    shutil.copytree(small_dataset_dir, cfg.data.dataset_dir)
    (cfg.data.dataset_dir / "limits.txt").write_text(_limits(cfg.data))
    with open_run(cfg) as run:
        stages.fetch(run.cfg)
    assert read_metadata(run.cfg.data.dataset_dir) == read_metadata(small_dataset_dir)
    assert _tree(run.cfg.data.dataset_dir) == _tree(cfg.data.dataset_dir)
