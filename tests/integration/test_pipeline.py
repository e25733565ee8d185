"""The real chain on a small real subset: Prefect (ephemeral API) runs the flow, Ray Train trains on local
Ray, MLflow (sqlite) registers and promotes, Ray Serve serves the champion over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import yaml
from conftest import small_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def pipeline_run(prefect_api, fashion_mnist_dir, tmp_path_factory):
    """One flow run with deploy=True; yields (config, flow state, result). Tears Serve and Ray down after."""
    import ray
    from ray import serve

    from pipelines.training import training_pipeline

    tmp = tmp_path_factory.mktemp("pipeline")
    data_dir = tmp / "data"
    (data_dir / "raw").mkdir(parents=True)
    (data_dir / "raw" / "fashion_mnist").symlink_to(fashion_mnist_dir.parent / "raw" / "fashion_mnist")
    cfg = small_config(tmp, data_dir)
    params_path = tmp / "params.yaml"
    params_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True)))
    # Sections as plain dicts, the way a deployment's form sends them: Prefect validates them into models.
    dump = cfg.model_dump(mode="json", by_alias=True)
    state = training_pipeline(
        model=dump["model"], train=dump["train"], data=dump["data"], augment=dump["augment"],
        registry=dump["registry"], deploy=True, params_path=str(params_path), return_state=True,
    )
    try:
        yield cfg, state, state.result()
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def url(cfg, path: str) -> str:
    return f"http://{cfg.serve.host}:{cfg.serve.port}{path}"


def test_flow_completes_with_every_stage_and_registers_a_champion(pipeline_run):
    cfg, state, result = pipeline_run
    assert state.is_completed()
    assert result["registry"]["promoted"] is True and result["registry"]["alias"] == "champion"
    assert result["test"]["count"] == 1000
    history = json.loads((Path(cfg.train.output_dir) / "history.json").read_text())
    assert len(history) == cfg.train.epochs and history[-1]["train/loss"] < history[0]["train/loss"]
    assert result["test"]["accuracy"] > 0.70  # 2 epochs on 3.6k real images; chance is 0.10


def test_prefect_recorded_the_tasks_and_report_artifacts(pipeline_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter

    _, state, _ = pipeline_run
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    names = {t.name.rsplit("-", 1)[0] for t in tasks}
    assert {"fetch", "validate", "augment", "train", "evaluate", "register", "deploy"} <= names
    assert all(t.state.is_completed() for t in tasks)
    by_key = {a.key: a for a in artifacts}
    assert {"data-validation", "evaluation-report", "pipeline-report"} <= set(by_key)
    assert "accuracy" in by_key["evaluation-report"].data and "champion" in by_key["pipeline-report"].data


def test_mlflow_run_has_params_metrics_artifacts_and_lineage(pipeline_run):
    from mlflow.tracking import MlflowClient

    cfg, _, result = pipeline_run
    uri = cfg.registry.resolved_tracking_uri()
    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(result["registry"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == str(cfg.train.epochs)
    assert run.data.metrics["test/accuracy"] == pytest.approx(result["test"]["accuracy"])
    assert len(client.get_metric_history(run.info.run_id, "val/accuracy")) == cfg.train.epochs  # from rank 0
    assert len(run.data.tags["git.commit"]) == 40
    assert run.data.tags["dvc.md5.dataset"].endswith(".dir")
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"evaluation", "tensorboard", "validation", "report.md"} <= top
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in evaluation
    mv = client.get_model_version_by_alias(cfg.model_name, "champion")
    assert str(mv.version) == result["registry"]["version"]


def offline_predictor(cfg):
    from modelyard.inference import Predictor

    return Predictor.from_dir(Path(cfg.train.output_dir) / "model")


def test_champion_loads_as_an_mlflow_pyfunc(pipeline_run, test_sample, class_names):
    import mlflow.pyfunc

    cfg, _, _ = pipeline_run
    mlflow.set_registry_uri(cfg.registry.resolved_tracking_uri())
    mlflow.set_tracking_uri(cfg.registry.resolved_tracking_uri())
    model = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}@champion")
    out = model.predict(test_sample.images[:200])
    assert len(out) == 200 and set(out["label"]) <= set(class_names)
    expected = offline_predictor(cfg).predict_proba(test_sample.images[:200]).argmax(axis=1)
    assert (out["index"].to_numpy() == expected).all()  # the registered model is the trained one
    assert (expected == test_sample.labels[:200]).mean() > 0.6


def test_served_model_classifies_real_images(pipeline_run, image_bytes, class_names):
    from modelyard.inference import decode_image

    cfg, _, result = pipeline_run
    predictor = offline_predictor(cfg)
    answers = {}
    for stem, data in image_bytes.items():
        resp = requests.post(url(cfg, "/predict"), files={"file": (f"{stem}.png", data, "image/png")}, timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == {"label", "index", "scores", "model"}
        assert body["label"] == class_names[body["index"]]
        assert sum(body["scores"].values()) == pytest.approx(1.0, abs=1e-3)
        assert body["model"] == {"name": cfg.model_name, "version": result["registry"]["version"]}
        answers[stem] = body["label"]
        # Same bytes through the offline Predictor: the endpoint adds no preprocessing drift.
        offline = predictor.predict(decode_image(data, predictor.spec)[None])[0]
        assert body["index"] == offline.index
        assert body["scores"][offline.label] == pytest.approx(offline.scores[offline.label], abs=1e-5)
    correct = sum(answers[_slug(label)] == label for label in class_names)
    assert correct >= 4, answers  # one real image per class from a 2-epoch model; chance is 1 in 10


def _slug(label: str) -> str:
    from modelyard.data.samples import slug

    return slug(label)


def test_health_and_model_endpoints(pipeline_run):
    cfg, _, result = pipeline_run
    health = requests.get(url(cfg, "/health"), timeout=10).json()
    assert health == {"status": "ok", "model": {"name": cfg.model_name, "version": result["registry"]["version"]}}
    info = requests.get(url(cfg, "/model"), timeout=10).json()
    assert info["version"] == result["registry"]["version"] and info["run_id"] == result["registry"]["run_id"]
    assert info["test_metrics"]["accuracy"] == pytest.approx(result["test"]["accuracy"])
    assert "champion" in info["aliases"]


def test_batching_answers_concurrent_requests(pipeline_run, image_bytes):
    from concurrent.futures import ThreadPoolExecutor

    cfg, _, _ = pipeline_run
    payloads = list(image_bytes.items()) * 4

    def post(item):
        stem, data = item
        return stem, requests.post(url(cfg, "/predict"), files={"file": (f"{stem}.png", data)}, timeout=60).json()["label"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(post, payloads))
    by_stem: dict[str, set] = {}
    for stem, label in results:
        by_stem.setdefault(stem, set()).add(label)
    assert len(results) == 40 and all(len(labels) == 1 for labels in by_stem.values())  # same image, same answer


@pytest.mark.parametrize(
    ("make_request", "status", "code"),
    [
        (lambda u: requests.post(u, files={"file": ("notes.txt", b"hello, I am not an image", "text/plain")}), 415, "not_an_image"),
        (lambda u: requests.post(u, files={"file": ("empty.png", b"", "image/png")}), 400, "empty_file"),
        (lambda u: requests.post(u, files={"file": ("dot.png", _png_1x1(), "image/png")}), 422, "image_too_small"),
        (lambda u: requests.post(u, files={"other": ("shirt.png", b"...", "image/png")}), 422, "missing_file"),
        (lambda u: requests.post(u, data=b"raw bytes", headers={"content-type": "application/octet-stream"}), 415, "not_multipart"),
        (lambda u: requests.post(u, files={"file": ("big.png", b"\0" * (64 * 1024 * 1024), "image/png")}), 413, "body_too_large"),
    ],
    ids=["non-image", "empty", "1x1", "no-file-field", "not-multipart", "64MB"],
)
def test_bad_input_gets_a_json_4xx_and_the_next_good_request_still_works(pipeline_run, image_bytes, make_request, status, code):
    cfg, _, _ = pipeline_run
    resp = make_request(url(cfg, "/predict"))
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == code and body["detail"]
    good = requests.post(url(cfg, "/predict"), files={"file": ("shirt.png", image_bytes["shirt"])}, timeout=30)
    assert good.status_code == 200


def _png_1x1() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_new_champion_is_rolled_in_while_requests_keep_succeeding(pipeline_run, image_bytes, test_sample):
    import threading

    import numpy as np

    from modelyard import registry
    from serving.deploy import deploy

    cfg, _, result = pipeline_run
    uri = cfg.registry.resolved_tracking_uri()
    old_version = result["registry"]["version"]
    run_id = registry.start_run(uri, cfg.registry.experiment, params={"note": "retrained"})
    new_version = registry.log_model(uri, run_id, Path(cfg.train.output_dir) / "model", cfg.model_name,
                                     input_example=np.ascontiguousarray(test_sample.images[:2]), pip_requirements=["torch"])
    registry.set_alias(uri, cfg.model_name, "champion", new_version)

    statuses, versions, stop = [], set(), threading.Event()

    def traffic():
        while not stop.is_set():
            resp = requests.post(url(cfg, "/predict"), files={"file": ("bag.png", image_bytes["bag"])}, timeout=60)
            statuses.append(resp.status_code)
            if resp.ok:
                versions.add(resp.json()["model"]["version"])

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        served = deploy(cfg.serve, cfg.registry, model_name=cfg.model_name, tracking_uri=uri)
    finally:
        stop.set()
        thread.join()
    assert served["version"] == new_version != old_version
    assert requests.get(url(cfg, "/model"), timeout=10).json()["version"] == new_version
    assert statuses and all(s == 200 for s in statuses), statuses
    assert old_version in versions  # traffic was answered by the old model before the swap
