"""The real chain on a small real subset: Prefect (ephemeral API) runs the flow, Ray Train trains on local
Ray, MLflow (sqlite) registers and promotes, Ray Serve serves the champion over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import yaml
from conftest import fuzz_openapi, small_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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
    """`path` on the task's own application (/<model name>/...)."""
    return f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(cfg.model_name)}{path}"


def test_flow_completes_with_every_stage_and_registers_a_champion(pipeline_run):
    cfg, state, result = pipeline_run
    assert state.is_completed()
    assert result["registry"]["promoted"] is True and result["registry"]["alias"] == "champion"
    assert result["test"]["count"] == 1000
    history = json.loads((Path(cfg.train.output_dir) / "history.json").read_text())
    assert len(history) == cfg.train.epochs and history[-1]["train/loss"] < history[0]["train/loss"]
    assert result["test"]["accuracy"] > 0.70  # 2 epochs on 3.6k real images; chance is 0.10


def test_the_run_worked_in_a_directory_of_its_own_and_published_it_to_the_stable_paths(pipeline_run):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client

    from modelyard.runs import published_paths, run_config, runs_root

    cfg, state, result = pipeline_run
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == runs_root(cfg) and run_dir.name.endswith(f"Z-{flow_run.name}"), run_dir
    doc = json.loads((run_dir / "run.json").read_text())
    assert doc["status"] == "succeeded" and doc["published_at"], doc
    assert (runs_root(cfg) / "latest").resolve() == run_dir.resolve()
    run_cfg = run_config(cfg, run_dir.resolve())
    for src, dst in published_paths(run_cfg, cfg):  # every stable path holds the run's copy, file for file
        assert src.exists(), src
        files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file()) if src.is_dir() else [Path()]
        assert files == (sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file()) if dst.is_dir() else [Path()])
        assert all((src / f).read_bytes() == (dst / f).read_bytes() for f in files), src
    assert (run_dir / "data" / cfg.data.dataset / "limits.txt").read_text() == "train_limit=4000\ntest_limit=1000\n"
    uri = cfg.registry.resolved_tracking_uri()
    tags = MlflowClient(uri).get_run(result["registry"]["run_id"]).data.tags
    assert tags["modelyard.outputs"] == str(run_dir.resolve())
    assert json.loads((run_dir / "train" / "train.json").read_text())["run_id"] == result["registry"]["run_id"]
    assert not (run_dir / "data" / "raw").exists()  # the raw download stayed the shared one


def test_prefect_recorded_the_tasks_and_report_artifacts(pipeline_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter

    _, state, _ = pipeline_run
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    names = {t.name.rsplit("-", 1)[0] for t in tasks}
    assert {"fetch", "validate", "augment", "train", "evaluate", "register", "publish", "deploy"} <= names
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
    # Exported to ONNX at registration, parity checked on 256 real test images and recorded on the version.
    assert mv.tags["onnx.status"] == "ok" and mv.tags["onnx.rows"] == "256", mv.tags
    assert float(mv.tags["onnx.max_abs_logit_diff"]) < 1e-3 and mv.tags["onnx.argmax_agreement"] == "1.0"
    from modelyard.stages import registration_dir

    assert "## ONNX\n\nExported" in (registration_dir(cfg) / "report.md").read_text()


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
    assert info["backend"] == "torch"  # the default; the canary test below serves it with onnxruntime


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


def test_openapi_documents_every_answer_and_survives_fuzzing(pipeline_run, tmp_path):
    """schemathesis reads the app's schema and sends what it allows and what it does not, with every check on:
    no 5xx, no undocumented status code, every 4xx body matches the documented {"error", "detail"}."""
    cfg, _, _ = pipeline_run
    schema = requests.get(url(cfg, "/openapi.json"), timeout=10).json()
    predict = schema["paths"]["/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {"multipart/form-data"}  # an image model reads images only
    assert {"400", "413", "415", "422", "503"} <= set(predict["responses"])
    result = fuzz_openapi(url(cfg, ""), tmp_path, max_time_s=20)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failures" not in result.stdout.split("SUMMARY")[-1]


class Traffic:
    """Requests in a loop from a background thread, recording (seconds since start, status, version)."""

    def __init__(self, target: str, data: bytes, headers: dict | None = None) -> None:
        import threading

        self.target, self.data, self.headers = target, data, headers or {}
        self.answers: list[tuple[float, int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        import time

        start = time.monotonic()
        with requests.Session() as session:
            while not self._stop.is_set():
                resp = session.post(self.target, files={"file": ("x.png", self.data)}, headers=self.headers, timeout=60)
                version = resp.json()["model"]["version"] if resp.ok else None
                self.answers.append((time.monotonic() - start, resp.status_code, version))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def failures(self) -> list:
        return [a for a in self.answers if a[1] != 200]


def test_rollback_moves_the_champion_back_and_serving_follows_under_load(pipeline_run, image_bytes, tmp_path):
    """`modelyard rollback` (the real CLI) after the roll-in above: v2 -> v1 with no failed request, and once
    the CLI has seen v1 served, every answer comes from v1."""
    import subprocess
    import sys
    import time

    from modelyard import registry

    cfg, _, result = pipeline_run
    uri = cfg.registry.resolved_tracking_uri()
    first = result["registry"]["version"]
    rolled_in = registry.get_version(uri, cfg.model_name, alias="champion").version
    assert rolled_in != first  # the roll-in test above made a newer version champion
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True)))
    with Traffic(url(cfg, "/predict"), image_bytes["bag"]) as traffic:
        time.sleep(1.0)
        cli = subprocess.run([sys.executable, "-m", "modelyard.cli", "rollback", cfg.model_name, "-p", str(params)],
                             capture_output=True, text=True, timeout=180)
        switched_at = traffic.answers[-1][0]
        time.sleep(2.0)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert f"moved from v{rolled_in} back to v{first}" in cli.stdout and f"answers with v{first} (every replica)" in cli.stdout
    assert registry.get_version(uri, cfg.model_name, alias="champion").version == first
    assert not traffic.failures, traffic.failures
    before = {v for t, _, v in traffic.answers if t < 1.0}
    after = {v for t, _, v in traffic.answers if t > switched_at + 0.5}  # the CLI returned once every replica had it
    assert before == {rolled_in} and after == {first}, (before, after)
    # The version rolled away from is marked; a second rollback has nowhere earlier to go.
    assert "modelyard.rolled_back" in registry.get_version(uri, cfg.model_name, version=rolled_in).tags
    again = subprocess.run([sys.executable, "-m", "modelyard.cli", "rollback", cfg.model_name, "-p", str(params)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "first 'champion'" in again.stdout + again.stderr


def test_every_task_is_its_own_app_listed_at_the_root(pipeline_run, test_sample):
    """A second task deployed beside the first: GET / lists both with their versions, and the first one's
    replicas are not touched by it."""
    import numpy as np
    from ray import serve

    from modelyard import registry
    from serving.deploy import deploy

    cfg, _, _ = pipeline_run
    uri = cfg.registry.resolved_tracking_uri()
    other = f"{cfg.model_name}-second-task"
    run_id = registry.start_run(uri, cfg.registry.experiment, params={"note": "second task"})
    version = registry.log_model(uri, run_id, Path(cfg.train.output_dir) / "model", other,
                                 input_example=np.ascontiguousarray(test_sample.images[:2]), pip_requirements=["torch"])
    registry.set_alias(uri, other, "champion", version)
    first_info = requests.get(url(cfg, "/model"), timeout=10).json()
    first_deployed = serve.status().applications[cfg.model_name].last_deployed_time_s
    from modelyard.config import AppConfig

    cfg_one = cfg.serve.model_copy(update={"apps": {other: AppConfig(replicas=1)}})
    served = deploy(cfg_one, cfg.registry, model_name=other, tracking_uri=uri)

    index = requests.get(f"http://{cfg.serve.host}:{cfg.serve.port}/", timeout=10).json()
    listed = {a["task"]: (a["route"], a["version"]) for a in index["apps"]}
    assert listed == {cfg.model_name: (f"/{cfg.model_name}", first_info["version"]), other: (f"/{other}", version)}
    assert served["url"].endswith(f"/{other}")
    assert requests.get(f"{served['url']}/model", timeout=10).json()["version"] == version
    status = serve.status().applications
    assert len(status[other].deployments["ModelServer"].replica_states) >= 1
    assert status[cfg.model_name].last_deployed_time_s == first_deployed  # the first app was not redeployed
    assert set(requests.get(url(cfg, "/model"), timeout=10).json()["replicas"]) == set(first_info["replicas"])
    serve.delete(other)


def test_canary_onnxruntime_and_auth_in_one_deploy(pipeline_run, image_bytes):
    """One redeploy with three settings. Canary: half the traffic goes to @challenger as well (split: it answers
    them), and /model counts requests per version and the agreement with the champion (same weights, so they
    agree). Backend onnxruntime: the champion's export from registration answers as torch did; the
    challenger (registered without one) falls back to torch. Auth: with a token set, every route but
    /health wants it. This is the module's last test: the app is left as it is."""
    import os
    import time

    from modelyard import registry
    from serving.deploy import deploy

    cfg, _, _ = pipeline_run
    uri = cfg.registry.resolved_tracking_uri()
    champion = registry.get_version(uri, cfg.model_name, alias="champion").version
    challenger = registry.latest_version(uri, cfg.model_name)
    assert challenger != champion
    registry.set_alias(uri, cfg.model_name, "challenger", challenger)
    torch_answer = requests.post(url(cfg, "/predict"), files={"file": ("bag.png", image_bytes["bag"])},
                                 timeout=30).json()
    time.sleep(1.5)  # replicas hand their counts over every second: this request is in `before`
    before = requests.get(url(cfg, "/model"), timeout=10).json()["traffic"]
    settings = cfg.serve.model_copy(update={
        "canary": cfg.serve.canary.model_copy(update={"share": 0.5}), "backend": "onnxruntime"})
    os.environ[cfg.serve.auth_token_env] = "s3cret-token"
    try:
        deploy(settings, cfg.registry, model_name=cfg.model_name, tracking_uri=uri)
    finally:
        del os.environ[cfg.serve.auth_token_env]
    token = {"Authorization": "Bearer s3cret-token"}

    # Auth
    denied = requests.post(url(cfg, "/predict"), files={"file": ("bag.png", image_bytes["bag"])}, timeout=30)
    assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
    assert requests.get(url(cfg, "/model"), timeout=10).status_code == 401
    assert requests.get(f"http://{cfg.serve.host}:{cfg.serve.port}/", timeout=10).status_code == 401
    assert requests.get(url(cfg, "/model"), headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    assert requests.get(url(cfg, "/health"), timeout=10).status_code == 200

    # Backends
    info = requests.get(url(cfg, "/model"), headers=token, timeout=10).json()
    assert info["backend"] == "onnxruntime" and "argmax agreement 1.0000" in info["backend_note"]
    assert info["challenger"]["version"] == challenger and info["canary"] == {"share": 0.5, "mode": "split"}
    assert info["challenger"]["backend"] == "torch" and "without an ONNX export" in info["challenger"]["backend_note"]

    # Canary
    answers = [requests.post(url(cfg, "/predict"), files={"file": ("bag.png", image_bytes["bag"])}, headers=token,
                             timeout=30).json() for _ in range(80)]
    versions = [a["model"]["version"] for a in answers]
    time.sleep(2.5)  # replicas hand their counts over every second
    after = requests.get(url(cfg, "/model"), headers=token, timeout=10).json()["traffic"]

    def grew(version: str, key: str) -> int:
        return after[version][key] - before.get(version, {}).get(key, 0)

    to_challenger = versions.count(challenger)
    assert 20 <= to_challenger <= 60, versions  # 80 draws at 0.5
    assert grew(champion, "requests") == 80 and grew(challenger, "requests") == to_challenger
    assert grew(challenger, "compared_with_champion") == to_challenger and after[challenger]["agreement"] == 1.0
    assert after[champion]["p99_ms"] > 0
    onnx_answer = next(a for a in answers if a["model"]["version"] == champion)
    assert onnx_answer["index"] == torch_answer["index"]
    for label, score in torch_answer["scores"].items():
        assert onnx_answer["scores"][label] == pytest.approx(score, abs=1e-4)
