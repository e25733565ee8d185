"""The pipeline's MLflow run (real sqlite MLflow): a stage after training claims it while it works and hands it
on; one that fails leaves it FAILED, never RUNNING; runs left RUNNING by a process that died are failed at
the next training, and no others."""

from __future__ import annotations

import json

import pytest

from helpers.config import small_config
from modelyard import stages
from modelyard.paths import TaskPaths
from modelyard.registry import tracking
from modelyard.runtime import process_owner

pytestmark = pytest.mark.integration


@pytest.fixture
def trained_run(tmp_path):
    """A config whose training output names an open MLflow run, as the train stage leaves it."""
    cfg = small_config(tmp_path)
    uri = cfg.registry.resolved_tracking_uri()
    run_id = tracking.start_run(uri, cfg.registry.experiment, params=cfg.flat())
    out = TaskPaths.of(cfg).train_dir
    out.mkdir(parents=True)
    (out / "train.json").write_text(json.dumps({"run_id": run_id, "wall_time_s": 1.0}))
    assert tracking.get_run(uri, run_id)["status"] == "RUNNING"
    return cfg, uri, run_id


def test_a_failed_evaluation_marks_the_run_failed(trained_run):
    cfg, uri, run_id = trained_run  # no model was saved: evaluation cannot load one
    with pytest.raises(Exception, match="model"):
        stages.evaluate(cfg)
    assert tracking.get_run(uri, run_id)["status"] == "FAILED"


def test_a_failed_registration_marks_the_run_failed(trained_run):
    cfg, uri, run_id = trained_run  # no evaluation.json: registration refuses
    with pytest.raises(FileNotFoundError, match="run the evaluate stage first"):
        stages.register(cfg)
    assert tracking.get_run(uri, run_id)["status"] == "FAILED"


def test_a_failure_leaves_an_already_finished_run_alone(trained_run):
    cfg, uri, run_id = trained_run
    tracking.end_run(uri, run_id)  # an earlier pipeline completed with this training output
    with pytest.raises(FileNotFoundError):
        stages.register(cfg)
    assert tracking.get_run(uri, run_id)["status"] == "FINISHED"


def test_runs_left_running_by_a_dead_process_are_failed_at_the_next_training_and_no_others(trained_run):
    """What SIGKILL or a power cut leaves: a RUNNING run whose owner process is gone. The reaper (called when a
    training starts) fails exactly those; a live owner, a reused pid, another host and a handed-on run stay."""
    import os
    import socket
    import subprocess
    import sys

    cfg, uri, handed_on = trained_run
    tracking.hand_on(uri, handed_on)  # as train leaves it for evaluate/register
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    owners = {
        "dead": f"{host}:{gone.pid}:1.00",
        "reused pid": f"{host}:{os.getpid()}:1.00",  # this pid, but a process that started at another time
        "alive": process_owner(),
        "elsewhere": f"some-other-host:{gone.pid}:1.00",
    }
    runs = {label: tracking.start_run(uri, cfg.registry.experiment, params={}, tags={tracking.OWNER_TAG: owner})
            for label, owner in owners.items()}
    reaped = tracking.reap_orphaned_runs(uri, cfg.registry.experiment)
    assert sorted(reaped) == sorted([runs["dead"], runs["reused pid"]])
    status = {label: tracking.get_run(uri, run)["status"] for label, run in runs.items()}
    assert status == {"dead": "FAILED", "reused pid": "FAILED", "alive": "RUNNING", "elsewhere": "RUNNING"}
    assert "died" in tracking.get_run(uri, runs["dead"])["tags"]["modelyard.failure"]
    assert tracking.get_run(uri, handed_on)["status"] == "RUNNING"


def test_a_stage_claims_the_run_while_it_works_and_hands_it_on(trained_run):
    _, uri, run_id = trained_run
    with tracking.claimed_run(uri, run_id) as claimed:  # what evaluate and register run inside
        owner_while_working = tracking.get_run(uri, run_id)["tags"].get(tracking.OWNER_TAG)
    assert claimed and owner_while_working == process_owner()
    assert tracking.get_run(uri, run_id)["tags"][tracking.OWNER_TAG] == ""
    assert tracking.get_run(uri, run_id)["status"] == "RUNNING"


def test_the_run_logger_is_what_training_logs_through(trained_run):
    import pickle

    _, uri, run_id = trained_run
    sink = pickle.loads(pickle.dumps(tracking.RunLogger(uri, run_id)))  # it travels to the Ray workers
    sink.log_metrics({"val/accuracy": 0.5, "train/loss": 1.0}, step=1)
    sink.log_metrics({"val/accuracy": 0.6}, step=2)
    sink.set_tags({"train.precision": "bf16"})
    assert sink.logged_steps("val/accuracy") == {1, 2}
    run = tracking.get_run(uri, run_id)
    assert run["metrics"]["val/accuracy"] == 0.6 and run["tags"]["train.precision"] == "bf16"
