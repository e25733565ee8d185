"""Retraining without a person, end to end (issue 22's done-when): a model trained by the training flow is
served with the traffic log on; real in-distribution traffic gives no drift; inverted real images give drift
in one monitor run, whose event the training deployment's trigger answers (the deployments served by
`pipelines.serve_deployments` in a process of their own, as `make up` serves them) with a retraining run that
trains on the labels posted for part of that traffic, goes through the same gate and canary, and records its
decision with the event that caused it: in MLflow, on the new version, as a Prefect artifact and as an event."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import requests

from helpers.config import small_config, write_params
from helpers.paths import REPO
from helpers.serving import png
from modelyard.data.dataset import load_split, read_metadata
from modelyard.paths import TaskPaths

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK = "fashion-retrained"


def _api() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def _wait(what: str, check, timeout_s: float, every_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(every_s)


@pytest.fixture(scope="module")
def watched(prefect_api, fashion_mnist_dir, tmp_path_factory):
    """The first model through the training flow, served; the deployments served in a child process that joins
    this test's Ray (as a flow run of `make up` joins the stack's)."""
    import ray
    from ray import serve

    from modelyard.forms import form_defaults
    from pipelines.training import training_pipeline

    tmp = tmp_path_factory.mktemp("retrain")
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "--no-scm", "-q"], cwd=tmp, check=True)
    cfg = small_config(tmp, recipe="fashion-mlp", data={"train_limit": 3000, "test_limit": 1000},
                       train={"epochs": 2}, registry={"model_name": TASK},
                       serve={"replicas": 1, "canary": {"share": 0.25},
                              "traffic_log": {"flush_every_s": 1}},
                       monitor={"retrain": {"min_new_labels": 10_000, "cooldown_min": 60}})
    params = write_params(cfg, tmp / "params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_PARAMS", str(params))
        state = training_pipeline(**form_defaults(params), deploy=True, return_state=True)
    assert state.is_completed(), state
    env = {**os.environ, "PREFECT_API_URL": _api(), "MODELYARD_PARAMS": str(params),
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}
    log = (tmp / "deployments.log").open("w")
    runner = subprocess.Popen([sys.executable, "-m", "pipelines.serve_deployments", str(params)], cwd=REPO, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait("the training deployment and its trigger", lambda: [a for a in httpx.post(
            f"{_api()}/automations/filter", json={}, timeout=10).json() if a["name"] == "retrain on monitor events"], 120)
        yield cfg, tmp, state.result()
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        try:
            runner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
        log.close()
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def _send(cfg, images) -> list[str]:
    url = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(TASK)}/predict"
    ids = []
    for image in images:
        answer = requests.post(url, files={"file": ("x.png", png(image), "image/png")}, timeout=30)
        assert answer.status_code == 200, answer.text
        ids.append(answer.headers["x-request-id"])
    return ids


def _training_runs() -> list[dict]:
    return httpx.post(f"{_api()}/flow_runs/filter", timeout=10,
                      json={"flow_runs": {"deployment_id": {"is_null_": False}}}).json()


def test_drift_starts_a_retraining_on_the_feedback_and_the_gate_decides(watched, class_names):
    from mlflow.tracking import MlflowClient

    from modelyard.monitoring import profile
    from pipelines.monitor import DRIFT_EVENT, monitor

    cfg, tmp, first = watched
    uri = cfg.registry.resolved_tracking_uri()
    traffic_dir = Path(cfg.traffic_dir)
    test = load_split(TaskPaths.of(cfg).dataset_dir, "test")
    start = time.time()

    _send(cfg, test.images[:150])  # real test images, as the model was evaluated on: no drift
    _wait("the calm traffic in the log", lambda: len(profile.read_traffic(traffic_dir, TASK, since=start)) >= 150, 30, 0.5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_PARAMS", str(tmp / "params.yaml"))
        calm = monitor(window_min=(time.time() - start) / 60 + 0.05)
        assert [r["status"] for r in calm] == ["ok"] and calm[0]["reasons"] == [], calm

        shifted_at = time.time()
        inverted = 255 - test.images[150:330]
        ids = _send(cfg, inverted)
        _wait("the shifted traffic in the log",
              lambda: len(profile.read_traffic(traffic_dir, TASK, since=shifted_at)) >= 180, 30, 0.5)
        labelled = list(range(0, 180, 3)) + list(range(1, 180, 3))  # labels for two thirds of it
        posted = requests.post(f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(TASK)}/feedback", timeout=30,
                               json={"feedback": [{"request_id": ids[i], "label": int(test.labels[150 + i])}
                                                  for i in labelled]})
        assert posted.status_code == 202 and posted.json()["accepted"] == 120
        assert not _training_runs() or all(r["parameters"].get("cause") is None for r in _training_runs())
        hit = monitor(window_min=(time.time() - shifted_at) / 60 + 0.05)
    [result] = hit
    assert result["status"] == "drift" and result["reasons"][0] == DRIFT_EVENT and result["event_id"], result
    assert result["live"]["1"]["labelled"] == 120 and result["live"]["1"]["accuracy"] < 0.5  # inverted: mostly wrong

    # Prefect starts the training deployment from the event
    def started():
        return [r for r in _training_runs() if (r["parameters"].get("cause") or {}).get("event_id") == result["event_id"]]
    [run] = _wait("a training run started by the drift event", started, 120)
    assert run["parameters"]["cause"] == {"event": DRIFT_EVENT, "event_id": result["event_id"], "task": TASK}
    assert run["parameters"]["deploy"] is True

    def finished():
        state = httpx.get(f"{_api()}/flow_runs/{run['id']}", timeout=10).json()["state"]
        return state if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None
    state = _wait("the retraining run's end", finished, 900, 5)
    assert state["type"] == "COMPLETED", ((tmp / "deployments.log").read_text()[-6000:], state)

    # the feedback was in its training data: the published dataset took the feedback set's train rows
    meta = read_metadata(TaskPaths.of(cfg).dataset_dir)
    fed = meta["feedback"]
    assert 70 <= fed["train_rows"] <= 110 and fed["train_rows"] + fed["holdout_rows"] == 120, fed
    assert meta["splits"]["train"]["count"] == 3000 + fed["train_rows"]
    assert meta["splits"]["test"]["count"] == 1000  # the test split stays as it was
    feedback_dir = Path(fed["path"])
    assert feedback_dir == (Path(cfg.paths.data_dir) / "feedback" / TASK).resolve()
    assert (feedback_dir.parent / f"{TASK}.dvc").is_file()  # versioned with DVC

    # the gate decided, and the decision is recorded with the event that caused it
    client = MlflowClient(uri)
    [decided] = client.search_runs([client.get_experiment_by_name("retraining").experiment_id],
                                   filter_string=f"tags.`modelyard.retrain.event_id` = '{result['event_id']}'")
    tags = decided.data.tags
    assert tags["modelyard.retrain.decision"] in ("promoted", "refused") and tags["modelyard.retrain.event"] == DRIFT_EVENT
    version = client.get_model_version(TASK, "2")
    assert version.tags["modelyard.retrain.event_id"] == result["event_id"]
    assert version.tags["modelyard.retrain.decision"] == tags["modelyard.retrain.decision"]
    training = client.get_run(version.run_id)
    assert training.data.tags["modelyard.retrain.event_id"] == result["event_id"]
    assert training.data.metrics["feedback/train_rows"] == fed["train_rows"]
    assert training.data.metrics["feedback_holdout/count"] == fed["holdout_rows"]
    # what it learnt from the inverted images shows on the held-out ones, reported apart from the test split
    assert training.data.metrics["feedback_holdout/accuracy"] > result["live"]["1"]["accuracy"]
    assert decided.data.metrics["test_accuracy"] == pytest.approx(training.data.metrics["test/accuracy"])

    artifact = httpx.get(f"{_api()}/artifacts/retrain-{TASK}/latest", timeout=10).json()
    assert artifact["data"].startswith(f"# Retraining of {TASK}: {tags['modelyard.retrain.decision']}")
    assert result["event_id"] in artifact["data"]
    events = httpx.post(f"{_api()}/events/filter", timeout=10,
                        json={"filter": {"event": {"name": ["modelyard.retrain.decided"]}}}).json()["events"]
    assert [e["related"][0]["prefect.resource.id"] for e in events] == [f"prefect.event.{result['event_id']}"]

    # the same canary: a refused version is the challenger a share of traffic tries; a promoted one is served
    model = _wait("serving to follow the registry", lambda: (lambda m: m if (
        m["version"] == "2" or (m.get("challenger") or {}).get("version") == "2") else None)(requests.get(
            f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(TASK)}/model", timeout=10).json()), 60)
    assert (model["version"] == "2") == (tags["modelyard.retrain.decision"] == "promoted"), model
    assert model["card"]["task"] == TASK
    print(f"\nretraining: calm p={calm[0]['score']:.3g}, shifted p={result['score']:.3g}; live accuracy "
          f"{result['live']['1']['accuracy']:.3f} on {result['live']['1']['labelled']} labels; feedback {fed}; "
          f"decision {tags['modelyard.retrain.decision']}: {tags['modelyard.retrain.reason']}; v2 test "
          f"{training.data.metrics['test/accuracy']:.4f}, holdout {training.data.metrics['feedback_holdout/accuracy']:.4f}"
          f"; v1 test {first['test']['accuracy']:.4f}; run {run['name']} {state['type']}")

    # a second event within the cool-down is answered with a recorded skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_PARAMS", str(tmp / "params.yaml"))
        from pipelines.training import training_pipeline

        again = training_pipeline(cause={"event": DRIFT_EVENT, "event_id": "second", "task": TASK})
        assert again["retraining"]["decision"] == "skipped" and "cool-down" in again["retraining"]["reason"]
        # a cause the trigger could not have made is refused before anything runs
        refused = training_pipeline(cause={"event": DRIFT_EVENT, "event_id": "x", "task": "a' or '1'='1"},
                                    return_state=True)
    assert refused.is_failed() and "task" in str(refused.message)
    assert np.isfinite(decided.data.metrics["feedback_holdout_accuracy"])
    assert first["registry"]["version"] == "1" and first["registry"]["promoted"]
