"""modelyard.paths: every path a stage reads or writes, one directory per task, and a run directory that
mirrors the stable layout (modelyard.runs.run_config)."""

from __future__ import annotations

import itertools
from pathlib import Path

from helpers.paths import REPO
from modelyard.config import load_config
from modelyard.paths import TaskPaths
from modelyard.runs import published_paths, run_config

PARAMS = REPO / "params.yaml"


def config(tmp: Path, **sections):
    paths = {"data_dir": str(tmp / "data"), "artifacts_dir": str(tmp / "artifacts")}
    return load_config(PARAMS, {"paths": paths | sections.pop("paths", {}), **sections})


def outputs(paths: TaskPaths) -> list[Path]:
    """What the task's stages after fetch write."""
    return [paths.validation_dir, paths.prepared_dir, paths.train_dir, paths.eval_dir, paths.register_dir,
            paths.metrics_path]


def test_the_layout_of_one_task(tmp_path):
    p = TaskPaths.of(config(tmp_path, data={"dataset": "rt_polarity"}, model={"name": "lstm"}))
    data, artifacts = tmp_path / "data", tmp_path / "artifacts"
    assert p.raw_dir == data / "raw" / "rt_polarity"  # raw_dir unset: under data_dir
    assert p.dataset_dir == data / "rt_polarity"
    assert p.samples_dir == data / "samples" / "rt_polarity"
    assert p.task_dir == artifacts / "rt_polarity" / "lstm"
    assert p.validation_dir == p.task_dir / "validation" and p.prepared_dir == p.task_dir / "prepared"
    assert p.train_dir == p.task_dir / "train" and p.model_dir == p.task_dir / "train" / "model"
    assert p.eval_dir == p.task_dir / "eval" and p.metrics_path == p.task_dir / "metrics.json"
    assert p.register_dir == p.task_dir / "register"
    assert p.runs_root == artifacts / "runs"
    assert p.search_dir == p.task_dir / "search"
    assert p.published() == [p.dataset_dir, *outputs(p), p.search_dir]


def test_shared_raw_downloads_live_where_raw_dir_says(tmp_path):
    p = TaskPaths.of(config(tmp_path, paths={"raw_dir": str(tmp_path / "shared-raw")}))
    assert p.raw_root == tmp_path / "shared-raw" and p.raw_dir == tmp_path / "shared-raw" / "fashion_mnist"
    assert p.dataset_dir == tmp_path / "data" / "fashion_mnist"  # the dataset itself stays under data_dir


def test_two_tasks_never_share_an_output_directory(tmp_path):
    from modelyard.data.datasets import dataset_names
    from modelyard.models import family_names

    tasks = {(d, f): TaskPaths.of(config(tmp_path, data={"dataset": d}, model={"name": f}))
             for d, f in itertools.product(dataset_names(), family_names())}
    for (a, pa), (b, pb) in itertools.combinations(tasks.items(), 2):
        for x, y in itertools.product(outputs(pa), outputs(pb)):
            assert x != y and x not in y.parents and y not in x.parents, f"{a} and {b} share {x} / {y}"
        # Only tasks of one dataset share its data, which is the same for both.
        assert (pa.dataset_dir == pb.dataset_dir) == (a[0] == b[0])


def test_settings_other_than_the_task_do_not_move_its_paths(tmp_path):
    base = TaskPaths.of(config(tmp_path))
    tuned = TaskPaths.of(config(tmp_path, train={"epochs": 3}, prepare={"seed": 7},
                                model={"name": "cnn", "width": 8}))
    assert tuned == base
    named = TaskPaths.of(config(tmp_path, registry={"model_name": "shirts"}))
    assert named.task_dir == base.task_dir  # the registered name is not a path


def test_a_run_directory_mirrors_the_stable_layout(tmp_path):
    stable = config(tmp_path, paths={"raw_dir": str(tmp_path / "raw")}, data={"dataset": "bbc_news"},
                    model={"name": "bert"})
    run_dir = tmp_path / "artifacts" / "runs" / "20250101T000000Z-test"
    run = run_config(stable, run_dir)
    s, r = TaskPaths.of(stable), TaskPaths.of(run)
    assert r.dataset_dir == run_dir / "data" / "bbc_news"
    assert r.task_dir == run_dir / "bbc_news" / "bert"
    assert r.raw_dir == s.raw_dir.resolve()  # raw downloads stay shared
    for mine, theirs in zip(outputs(r), outputs(s)):  # the same layout under the run directory
        assert mine.relative_to(run_dir) == theirs.relative_to(tmp_path / "artifacts")
    assert published_paths(run, stable) == list(zip(r.published(), s.published()))
    assert all(run_dir in path.parents for path in r.published())  # nothing a run writes is a stable path
    # Everything else about the run is the config it started from.
    assert run.model_dump(exclude={"paths"}) == stable.model_dump(exclude={"paths"})


def test_a_relative_raw_dir_is_made_absolute_for_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stable = load_config(PARAMS)  # data_dir "data", raw_dir unset: data/raw relative to the working directory
    run = run_config(stable, tmp_path / "runs" / "r1")
    assert TaskPaths.of(run).raw_root == tmp_path / "data" / "raw"
    assert TaskPaths.of(run).raw_root.is_absolute()
