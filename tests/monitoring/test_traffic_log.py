"""The traffic log and the monitor against a real Ray Serve app: a small MLP trained here on real
Fashion-MNIST, registered with its reference profile (its answers on 600 real test images) and served with
the log on. Real test images the model never saw go in (no drift reported), then the same kind of images
inverted (drift reported in one monitor run); every answer carries a request id, found again in the log with
its prediction, scores, latency and embedding."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from helpers.config import small_config
from helpers.models import make_model, register
from helpers.serving import png
from modelyard.data.dataset import load_split
from modelyard.monitoring import profile
from modelyard.monitoring.embedding import DIM
from modelyard.monitoring.monitor import monitor_task

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK = "fashion-mnist-watched"


@pytest.fixture(scope="module")
def served(small_dataset_dir, class_names, tmp_path_factory):
    import ray
    from ray import serve

    from serving.deploy import deploy

    tmp = tmp_path_factory.mktemp("watched")
    cfg = small_config(tmp, serve={"replicas": 1, "traffic_log": {"dir": str(tmp / "traffic"), "flush_every_s": 1}})
    uri = cfg.registry.resolved_tracking_uri()
    test = load_split(small_dataset_dir, "test")
    model_dir = make_model(tmp, "v1", small_dataset_dir, class_names, train_epochs=2)
    assert register(uri, TASK, model_dir, small_dataset_dir, "hash-W", np.ascontiguousarray(test.images[:128]),
                    onnx=True, reference=test.images[:600]).promoted
    deploy(cfg.serve, cfg.registry, model_name=TASK, tracking_uri=uri)
    try:
        yield cfg, uri, tmp, test
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def send(cfg, images, **headers) -> list[requests.Response]:
    url = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(TASK)}/predict"
    return [requests.post(url, files={"file": ("x.png", png(image), "image/png")}, headers=headers, timeout=30)
            for image in images]


def logged(tmp, since: float, rows: int) -> pd.DataFrame:
    deadline = time.monotonic() + 30
    while True:
        frame = profile.read_traffic(tmp / "traffic", TASK, since=since)
        if len(frame) >= rows or time.monotonic() > deadline:
            return frame
        time.sleep(0.5)


def test_every_answer_has_a_request_id_and_a_row_in_the_log(served):
    cfg, _, tmp, test = served
    start = time.time()
    mine = send(cfg, test.images[600:602], **{"X-Request-ID": "client-42"})  # the caller's own id is kept
    theirs = send(cfg, test.images[602:603])  # none given: Serve's ingress makes one
    assert [r.status_code for r in mine + theirs] == [200] * 3
    assert [r.headers["x-request-id"] for r in mine] == ["client-42"] * 2
    made_up = theirs[0].headers["x-request-id"]
    assert len(made_up) >= 16 and "," not in made_up
    frame = logged(tmp, start, 3)
    assert sorted(frame["request_id"]) == sorted(["client-42", "client-42", made_up])
    row = frame[frame["request_id"] == made_up].iloc[0]
    answer = theirs[0].json()
    assert row["task"] == TASK and row["version"] == answer["model"]["version"] == "1"
    assert row["predicted"] == answer["index"] and row["label"] == answer["label"]
    assert np.allclose(row["scores"], list(answer["scores"].values()), atol=1e-6)
    assert row["confidence"] == pytest.approx(max(answer["scores"].values()), abs=1e-6)
    assert row["latency_ms"] > 0 and len(row["embedding"]) == DIM
    assert "_embedding" not in answer and set(answer) == {"label", "index", "scores", "model"}


def test_the_monitor_sees_no_drift_in_real_traffic_and_drift_in_inverted_images(served):
    cfg, uri, tmp, test = served
    start = time.time()
    assert all(r.status_code == 200 for r in send(cfg, test.images[603:783]))
    assert len(logged(tmp, start, 180)) >= 180
    calm = monitor_task(uri, TASK, tmp / "traffic", tmp / "monitor-calm", since=start)
    assert calm["status"] == "ok" and calm["window_rows"] == 180 and calm["reference_rows"] == 600, calm

    shifted_at = time.time()
    assert all(r.status_code == 200 for r in send(cfg, 255 - test.images[783:963]))
    assert len(logged(tmp, shifted_at, 180)) >= 180
    hit = monitor_task(uri, TASK, tmp / "traffic", tmp / "monitor-hit", since=shifted_at)
    assert hit["status"] == "drift" and hit["window_rows"] == 180, hit
    assert {t["name"] for t in hit["tests"] if t["drifted"]} >= {"embedding"}
    report = (tmp / "monitor-hit" / "report.md").read_text()
    assert report.startswith(f"# Drift of {TASK} v1\n\n**drift**: 180 requests")
    assert (tmp / "monitor-hit" / "drift.png").stat().st_size > 10_000


def test_a_window_with_too_little_traffic_tests_nothing(served):
    _, uri, tmp, _ = served
    quiet = monitor_task(uri, TASK, tmp / "traffic", tmp / "monitor-quiet", window_s=0.001)
    assert quiet["status"] == "too_little_traffic" and not quiet["drifted"] and quiet["window_rows"] == 0


def test_the_monitor_flow_records_the_drift_in_mlflow_and_prefect_and_emits_the_event(served, prefect_api):
    """Runs after the drift test: the last ten minutes hold the real and the inverted images."""
    import httpx
    from mlflow.tracking import MlflowClient
    from prefect.settings import PREFECT_API_URL

    from helpers.config import write_params
    from pipelines.monitor import DRIFT_EVENT, monitor

    cfg, uri, tmp, _ = served
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_PARAMS", str(write_params(cfg, tmp / "params.yaml")))
        state = monitor(window_min=10, return_state=True)
    assert state.is_completed(), state
    [result] = state.result()
    assert result["task"] == TASK and result["status"] == "drift" and result["window_rows"] >= 360
    history = MlflowClient(uri).get_metric_history(result["mlflow_run_id"], "monitor/drifted")
    assert [(m.step, m.value) for m in history] == [(0, 1.0)]
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(result["mlflow_run_id"], "reports")}
    assert len(artifacts) == 1 and Path(result["report_dir"], "drift.png").exists()
    api = PREFECT_API_URL.value()
    found = httpx.get(f"{api}/artifacts/drift-{TASK}/latest", timeout=10)
    assert found.status_code == 200 and "**drift**" in found.json()["data"]
    events = []
    for _ in range(30):  # the server stores events a moment after they are emitted
        events = httpx.post(f"{api}/events/filter", json={"filter": {"event": {"name": [DRIFT_EVENT]}}},
                            timeout=10).json()["events"]
        if events:
            break
        time.sleep(1)
    assert [e["resource"]["modelyard.task"] for e in events] == [TASK]
    assert events[0]["id"] == result["event_id"] and events[0]["payload"]["version"] == "1"


def test_labels_posted_for_answered_requests_join_their_inputs(served, class_names):
    from modelyard.monitoring import feedback

    cfg, _, tmp, test = served
    base = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(TASK)}"
    answers = send(cfg, test.images[970:973])
    ids = [r.headers["x-request-id"] for r in answers]
    truth = [int(x) for x in test.labels[970:973]]
    one = requests.post(f"{base}/feedback", json={"request_id": ids[0], "label": class_names[truth[0]]}, timeout=10)
    assert one.status_code == 202 and one.json() == {"accepted": 1, "task": TASK}
    many = requests.post(f"{base}/feedback", timeout=10, json={"feedback": [
        {"request_id": ids[1], "item": 0, "label": truth[1]}, {"request_id": ids[2], "label": class_names[truth[2]]}]})
    assert many.status_code == 202 and many.json()["accepted"] == 2

    refused = {
        "unknown_label": requests.post(f"{base}/feedback", json={"request_id": ids[0], "label": "Parrot"}, timeout=10),
        "label_number": requests.post(f"{base}/feedback", json={"request_id": ids[0], "label": 10}, timeout=10),
        "request_id": requests.post(f"{base}/feedback", json={"request_id": "a b", "label": 1}, timeout=10),
        "item": requests.post(f"{base}/feedback", json={"request_id": ids[0], "item": 64, "label": 1}, timeout=10),
        "extra": requests.post(f"{base}/feedback", json={"request_id": ids[0], "label": 1, "x": 1}, timeout=10),
        "not_json": requests.post(f"{base}/feedback", data=b"{", headers={"content-type": "application/json"},
                                  timeout=10),
        "form": requests.post(f"{base}/feedback", data={"request_id": ids[0]}, timeout=10),
    }
    assert {k: r.status_code for k, r in refused.items()} == {
        "unknown_label": 422, "label_number": 422, "request_id": 422, "item": 422, "extra": 422, "not_json": 400,
        "form": 415}
    assert refused["unknown_label"].json()["error"] == "unknown_label"
    assert "Parrot" in refused["unknown_label"].json()["detail"] and "Ankle boot" in refused["unknown_label"].json()["detail"]

    deadline = time.monotonic() + 30
    while len(frame := feedback.labelled(tmp / "traffic", TASK, inputs=True)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)  # the answers' rows reach the log within a flush
    frame = frame.set_index("request_id")
    assert [int(frame.loc[i, "index"]) for i in ids] == truth
    written = pd.concat([pd.read_parquet(f) for f in feedback.labels_dir(tmp / "traffic", TASK).glob("*.parquet")])
    assert len(written) == 3  # none of the refused posts was recorded
    for image, request_id in zip(test.images[970:973], ids):
        assert np.array_equal(profile.decode_input(frame.loc[request_id, "input"]), image)
    assert feedback.live_accuracy(frame.reset_index())["1"]["labelled"] == 3


def test_schemathesis_finds_nothing_against_predict_and_feedback(served):
    from helpers.serving import fuzz_openapi

    cfg, _, tmp, _ = served
    schema = requests.get(f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(TASK)}/openapi.json",
                          timeout=10).json()
    label = schema["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0]
    assert "Ankle boot" in label["properties"]["label"]["oneOf"][0]["enum"]
    done = fuzz_openapi(f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(TASK)}", tmp)
    assert done.returncode == 0, done.stdout[-4000:]
