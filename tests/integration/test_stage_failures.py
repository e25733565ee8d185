"""A stage after training that fails leaves the training's MLflow run FAILED, never RUNNING (real sqlite MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import small_config

from modelyard import registry, stages

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
