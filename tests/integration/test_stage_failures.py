"""A stage after training that fails leaves the training's MLflow run FAILED, never RUNNING (real sqlite MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import small_config

from modelyard import registry, stages
from modelyard.runtime import process_owner

pytestmark = pytest.mark.integration


@pytest.fixture
def trained_run(tmp_path, small_dataset_dir):
    """A config whose training output names an open MLflow run, as the train stage leaves it."""
    cfg = small_config(tmp_path, small_dataset_dir.parent)
    uri = cfg.registry.resolved_tracking_uri()
    run_id = registry.start_run(uri, cfg.registry.experiment, params=cfg.flat())
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True)
    (out / "train.json").write_text(json.dumps({"run_id": run_id, "wall_time_s": 1.0}))
    assert registry.get_run(uri, run_id)["status"] == "RUNNING"
    return cfg, uri, run_id


def test_a_failed_evaluation_marks_the_run_failed(trained_run):
    cfg, uri, run_id = trained_run  # no model was saved: evaluation cannot load one
    with pytest.raises(Exception, match="model"):
        stages.evaluate(cfg)
    assert registry.get_run(uri, run_id)["status"] == "FAILED"


def test_a_failed_registration_marks_the_run_failed(trained_run):
    cfg, uri, run_id = trained_run  # no evaluation.json: registration refuses
    with pytest.raises(FileNotFoundError, match="run the evaluate stage first"):
        stages.register(cfg)
    assert registry.get_run(uri, run_id)["status"] == "FAILED"


def test_a_failure_leaves_an_already_finished_run_alone(trained_run):
    cfg, uri, run_id = trained_run
    registry.end_run(uri, run_id)  # an earlier pipeline completed with this training output
    with pytest.raises(FileNotFoundError):
        stages.register(cfg)
    assert registry.get_run(uri, run_id)["status"] == "FINISHED"


def test_runs_left_running_by_a_dead_process_are_failed_at_the_next_training_and_no_others(trained_run):
    """What SIGKILL or a power cut leaves: a RUNNING run whose owner process is gone. The reaper (called when a
    training starts) fails exactly those; a live owner, a reused pid, another host and a handed-on run stay."""
    import os
    import socket
    import subprocess
    import sys

    cfg, uri, handed_on = trained_run
    registry.set_tags(uri, handed_on, {stages.OWNER_TAG: ""})  # as train leaves it for evaluate/register
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    owners = {
        "dead": f"{host}:{gone.pid}:1.00",
        "reused pid": f"{host}:{os.getpid()}:1.00",  # this pid, but a process that started at another time
        "alive": process_owner(),
        "elsewhere": f"some-other-host:{gone.pid}:1.00",
    }
    runs = {}
    for label, owner in owners.items():
        runs[label] = registry.start_run(uri, cfg.registry.experiment, params={}, tags={stages.OWNER_TAG: owner})
    reaped = stages.reap_orphaned_runs(uri, cfg.registry.experiment)
    assert sorted(reaped) == sorted([runs["dead"], runs["reused pid"]])
    status = {label: registry.get_run(uri, run)["status"] for label, run in runs.items()}
    assert status == {"dead": "FAILED", "reused pid": "FAILED", "alive": "RUNNING", "elsewhere": "RUNNING"}
    assert "died" in registry.get_run(uri, runs["dead"])["tags"]["modelyard.failure"]
    assert registry.get_run(uri, handed_on)["status"] == "RUNNING"


def test_a_stage_claims_the_run_while_it_works_and_hands_it_on(trained_run):
    cfg, uri, run_id = trained_run
    with stages._failing_marks_run(cfg):  # what evaluate and register run inside
        owner_while_working = registry.get_run(uri, run_id)["tags"].get(stages.OWNER_TAG)
    assert owner_while_working == process_owner()
    assert registry.get_run(uri, run_id)["tags"][stages.OWNER_TAG] == ""
    assert registry.get_run(uri, run_id)["status"] == "RUNNING"
