"""A task's Ray Serve application over HTTP (local Ray, MLflow on sqlite), serving small MLPs trained here on
real Fashion-MNIST: answers, batching, every bad input a documented 4xx, a new champion rolled in and rolled
back under load with no failed request, several tasks side by side, canary + ONNX Runtime + a bearer token, and
schemathesis against the app's own OpenAPI document. Each test sets up the registry state it needs itself."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

from helpers.config import small_config, write_params
from helpers.models import make_model, register
from helpers.serving import fuzz_openapi

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK = "fashion-mnist-serving"


@pytest.fixture(scope="module")
def served(small_dataset_dir, class_names, test_sample, tmp_path_factory):
    """(config, tracking uri, model dirs by name) with v1 of TASK served by two replicas."""
    import ray
    from ray import serve

    from serving.deploy import deploy

    tmp = tmp_path_factory.mktemp("serving")
    cfg = small_config(tmp, serve={"replicas": 2, "follow_aliases_s": 1.0})
    uri = cfg.registry.resolved_tracking_uri()
    models = {"v1": make_model(tmp, "v1", small_dataset_dir, class_names, train_epochs=1),
              "v2": make_model(tmp, "v2", small_dataset_dir, class_names, train_epochs=2)}
    sample = np.ascontiguousarray(test_sample.images[:128])
    assert register(uri, TASK, models["v1"], small_dataset_dir, "hash-A", sample, onnx=True).promoted
    deploy(cfg.serve, cfg.registry, model_name=TASK, tracking_uri=uri)
    try:
        yield cfg, uri, models, tmp
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def url(cfg, path: str = "") -> str:
    return f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(TASK)}{path}"


def post_image(cfg, data: bytes, **kwargs) -> requests.Response:
    return requests.post(url(cfg, "/predict"), files={"file": ("x.png", data, "image/png")}, timeout=60, **kwargs)


def new_champion(served, model: str, test_sample) -> str:
    """Register `model` as a new version and make it the champion (as a promotion does); returns it."""
    from modelyard.registry import promotion, tracking, versions

    cfg, uri, models, _ = served
    champion = versions.get_version(uri, TASK, alias="champion").version
    run_id = tracking.start_run(uri, cfg.registry.experiment, params={"model": model})
    version = versions.log_model(uri, run_id, models[model], TASK, pip_requirements=["torch"],
                                 input_example=np.ascontiguousarray(test_sample.images[:2]))
    versions.set_version_tags(uri, TASK, version, {promotion.PREVIOUS_CHAMPION_TAG: champion})
    versions.set_alias(uri, TASK, "champion", version)
    return version


def wait_until_served(cfg, version: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = requests.get(url(cfg, "/model"), timeout=10).json()
        if set(info["replicas"].values()) == {version}:
            return
        time.sleep(0.3)
    raise AssertionError(f"replicas still serve {info['replicas']}, not v{version}")


class Traffic:
    """Requests in a loop from a background thread, recording (seconds since start, status, version); a request
    the server never answered is recorded with the exception, not as a status."""

    def __init__(self, cfg, data: bytes, headers: dict | None = None) -> None:
        self.cfg, self.data, self.headers = cfg, data, headers or {}
        self.answers: list[tuple[float, int | str, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        start = time.monotonic()
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    resp = session.post(url(self.cfg, "/predict"), files={"file": ("x.png", self.data)},
                                        headers=self.headers, timeout=60)
                    answer = (resp.status_code, resp.json()["model"]["version"] if resp.ok else None)
                except requests.RequestException as exc:
                    answer = (type(exc).__name__, None)
                self.answers.append((time.monotonic() - start, *answer))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def failures(self) -> list:
        return [a for a in self.answers if a[1] != 200]


def test_health_model_and_index(served):
    from modelyard.registry import versions

    cfg, uri, _, _ = served
    champion = versions.get_version(uri, TASK, alias="champion").version
    health = requests.get(url(cfg, "/health"), timeout=10).json()
    assert health == {"status": "ok", "model": {"name": TASK, "version": champion}}
    info = requests.get(url(cfg, "/model"), timeout=10).json()
    assert info["version"] == champion and "champion" in info["aliases"] and info["modality"] == "image"
    # the default backend: the version's ONNX export, which passed its parity check at registration
    assert info["backend"] == "onnxruntime" and "parity at registration" in info["backend_note"], info["backend_note"]
    assert len(info["replicas"]) == 2
    index = requests.get(f"http://{cfg.serve.host}:{cfg.serve.port}/", timeout=10).json()
    assert {a["task"]: a["route"] for a in index["apps"]}[TASK] == f"/{TASK}"


def test_batching_answers_concurrent_requests_as_one_at_a_time(served, image_bytes):
    from concurrent.futures import ThreadPoolExecutor

    cfg, *_ = served
    alone = {stem: post_image(cfg, data).json()["scores"] for stem, data in image_bytes.items()}
    payloads = list(image_bytes.items()) * 4
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda item: (item[0], post_image(cfg, item[1]).json()), payloads))
    assert len(results) == 40
    for stem, body in results:  # batched with others, an image gets the scores it gets alone
        assert body["scores"] == pytest.approx(alone[stem], abs=1e-5), stem


def _png_1x1() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("make_request", "status", "code"),
    [
        (lambda u: requests.post(u, files={"file": ("notes.txt", b"hello, I am not an image", "text/plain")}), 415,
         "not_an_image"),
        (lambda u: requests.post(u, files={"file": ("empty.png", b"", "image/png")}), 400, "empty_file"),
        (lambda u: requests.post(u, files={"file": ("dot.png", _png_1x1(), "image/png")}), 422, "image_too_small"),
        (lambda u: requests.post(u, files={"other": ("shirt.png", b"...", "image/png")}), 422, "missing_file"),
        (lambda u: requests.post(u, data=b"raw bytes", headers={"content-type": "application/octet-stream"}), 415,
         "not_multipart"),
        (lambda u: requests.post(u, files={"file": ("big.png", b"\0" * (64 * 1024 * 1024), "image/png")}), 413,
         "body_too_large"),
    ],
    ids=["non-image", "empty", "1x1", "no-file-field", "not-multipart", "64MB"],
)
def test_bad_input_gets_a_json_4xx_and_the_next_good_request_still_works(served, image_bytes, make_request, status,
                                                                         code):
    cfg, *_ = served
    resp = make_request(url(cfg, "/predict"))
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == code and body["detail"]
    assert post_image(cfg, image_bytes["shirt"]).status_code == 200


def test_a_new_champion_is_rolled_in_while_requests_keep_succeeding(served, image_bytes, test_sample):
    from serving.deploy import deploy

    cfg, uri, _, _ = served
    old = requests.get(url(cfg, "/model"), timeout=10).json()["version"]
    new = new_champion(served, "v2", test_sample)
    with Traffic(cfg, image_bytes["bag"]) as traffic:
        time.sleep(0.5)
        served_now = deploy(cfg.serve, cfg.registry, model_name=TASK, tracking_uri=uri)
        time.sleep(0.5)
    assert served_now["version"] == new != old
    assert requests.get(url(cfg, "/model"), timeout=10).json()["version"] == new
    assert traffic.answers and not traffic.failures, traffic.failures
    assert {v for _, _, v in traffic.answers} == {old, new}  # answered by the old model, then by the new one


def test_rollback_moves_the_champion_back_and_serving_follows_under_load(served, image_bytes, test_sample):
    """`modelyard rollback` (the real CLI): the newest champion -> the one before, with no failed request, and
    once the CLI has seen the old version served, every answer comes from it."""
    import subprocess
    import sys

    from modelyard.registry import versions

    cfg, uri, _, tmp = served
    before = requests.get(url(cfg, "/model"), timeout=10).json()["version"]
    rolled_in = new_champion(served, "v1", test_sample)
    wait_until_served(cfg, rolled_in)  # the replicas follow the alias on their own
    params = write_params(cfg, tmp / "params.yaml")
    with Traffic(cfg, image_bytes["bag"]) as traffic:
        time.sleep(1.0)
        cli = subprocess.run([sys.executable, "-m", "modelyard.cli", "rollback", TASK, "-p", str(params)],
                             capture_output=True, text=True, timeout=180)
        switched_at = traffic.answers[-1][0]
        time.sleep(2.0)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert f"moved from v{rolled_in} back to v{before}" in cli.stdout
    assert f"answers with v{before} (every replica)" in cli.stdout
    assert versions.get_version(uri, TASK, alias="champion").version == before
    assert not traffic.failures, traffic.failures
    early = {v for t, _, v in traffic.answers if t < 1.0}
    late = {v for t, _, v in traffic.answers if t > switched_at + 0.5}  # the CLI returned once every replica had it
    assert early == {rolled_in} and late == {before}, (early, late)
    assert "modelyard.rolled_back" in versions.get_version(uri, TASK, version=rolled_in).tags


def test_every_task_is_its_own_app_listed_at_the_root(served, test_sample):
    """A second task deployed beside the first: GET / lists both with their versions, and the first one's
    replicas are not touched by it."""
    from ray import serve

    from modelyard.config import AppConfig
    from modelyard.registry import tracking, versions
    from serving.deploy import deploy

    cfg, uri, models, _ = served
    other = f"{TASK}-second"
    run_id = tracking.start_run(uri, cfg.registry.experiment, params={"note": "second task"})
    version = versions.log_model(uri, run_id, models["v1"], other, pip_requirements=["torch"],
                                 input_example=np.ascontiguousarray(test_sample.images[:2]))
    versions.set_alias(uri, other, "champion", version)
    first_info = requests.get(url(cfg, "/model"), timeout=10).json()
    first_deployed = serve.status().applications[TASK].last_deployed_time_s
    served_other = deploy(cfg.serve.model_copy(update={"apps": {other: AppConfig(replicas=1)}}), cfg.registry,
                          model_name=other, tracking_uri=uri)
    try:
        index = requests.get(f"http://{cfg.serve.host}:{cfg.serve.port}/", timeout=10).json()
        listed = {a["task"]: (a["route"], a["version"]) for a in index["apps"]}
        assert listed == {TASK: (f"/{TASK}", first_info["version"]), other: (f"/{other}", version)}
        assert requests.get(f"{served_other['url']}/model", timeout=10).json()["version"] == version
        status = serve.status().applications
        assert len(status[other].deployments["ModelServer"].replica_states) >= 1
        assert status[TASK].last_deployed_time_s == first_deployed  # the first app was not redeployed
        assert set(requests.get(url(cfg, "/model"), timeout=10).json()["replicas"]) == set(first_info["replicas"])
    finally:
        serve.delete(other)


def test_a_series_task_is_served_as_json_with_every_bad_shape_a_documented_4xx(served, tmp_path):
    """The third modality through the same app: an FCN trained here on real JapaneseVowels utterances, its
    champion served beside the image task. One utterance and a batch are answered as the model answers in this
    process; each bad shape gets its documented code; schemathesis finds nothing against its schema."""
    from ray import serve

    from helpers.data import fetched
    from helpers.paths import REPO
    from modelyard.artifact import save_model_dir
    from modelyard.config import AppConfig, load_config
    from modelyard.data.dataset import load_split
    from modelyard.data.prepare import prepare_splits
    from modelyard.inference.predictor import Predictor
    from modelyard.modalities import get_modality
    from modelyard.models import family_config
    from modelyard.registry import tracking, versions
    from modelyard.training.local import train_local
    from serving.deploy import deploy

    cfg, uri, _, _ = served
    vowels = fetched("japanese_vowels")
    task_cfg = load_config(REPO / "params.yaml", {"recipe": "vowels-fcn", "train": {"epochs": 10}})
    model, spec, _, _ = train_local(task_cfg, family_config(task_cfg.model), vowels,
                                    prepare_splits(vowels, task_cfg.prepare, tmp_path / "prepared"))
    model_dir = save_model_dir(model, spec, tmp_path / "model")
    test = load_split(vowels, "test")
    name = "japanese-vowels-serving"
    run_id = tracking.start_run(uri, cfg.registry.experiment, params={"model": "fcn"})
    version = versions.log_model(uri, run_id, model_dir, name, pip_requirements=["torch"],
                                 input_example=get_modality("series").input_example(test, 2))
    versions.set_alias(uri, name, "champion", version)
    base = deploy(cfg.serve.model_copy(update={"apps": {name: AppConfig(replicas=1)}}), cfg.registry,
                  model_name=name, tracking_uri=uri)["url"]
    try:
        rows = list(range(0, len(test), 37))  # 10 utterances of several speakers and lengths
        local = Predictor.from_dir(model_dir).predict([test.series[i] for i in rows])
        expected = [p.label for p in local]
        one = requests.post(f"{base}/predict", json={"series": test.series[rows[0]].tolist()}, timeout=60)
        assert one.status_code == 200, one.text
        assert one.json()["label"] == expected[0] and one.json()["model"] == {"name": name, "version": version}
        many = requests.post(f"{base}/predict", json={"batch": [test.series[i].tolist() for i in rows]}, timeout=60)
        assert many.status_code == 200, many.text
        assert [p["label"] for p in many.json()["predictions"]] == expected
        assert sum(p.index == test.labels[i] for p, i in zip(local, rows)) >= 8  # it learnt the speakers

        frame = test.series[rows[0]][0].tolist()
        bad = {"bad_channels": (422, {"series": [frame[:11]] * 10}),
               "bad_shape": (422, {"series": [frame, frame[:3]]}),
               "missing_series": (422, {"frames": [frame]}),
               "series_too_long": (413, {"series": [frame] * 1000}),
               "too_many_series": (413, {"batch": [[frame]] * 65})}
        for code, (status, body) in bad.items():
            resp = requests.post(f"{base}/predict", json=body, timeout=60)
            assert (resp.status_code, resp.json()["error"]) == (status, code), resp.text
        nan = requests.post(f"{base}/predict", data='{"series": [[NaN' + ", 0" * 11 + "]]}",
                            headers={"content-type": "application/json"}, timeout=60)
        assert (nan.status_code, nan.json()["error"]) == (422, "not_finite")
        assert requests.post(f"{base}/predict", data=b"1,2,3", timeout=60).json()["error"] == "not_json"

        schema = requests.get(f"{base}/openapi.json", timeout=10).json()
        assert set(schema["paths"]["/predict"]["post"]["requestBody"]["content"]) == {"application/json"}
        result = fuzz_openapi(base, tmp_path, max_time_s=15)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    finally:
        serve.delete(name)


def test_openapi_documents_every_answer_and_survives_fuzzing(served, tmp_path):
    """schemathesis reads the app's schema and sends what it allows and what it does not, with every check on:
    no 5xx, no undocumented status code, every 4xx body matches the documented {"error", "detail"}."""
    cfg, *_ = served
    schema = requests.get(url(cfg, "/openapi.json"), timeout=10).json()
    predict = schema["paths"]["/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {"multipart/form-data"}  # an image model reads images only
    assert {"400", "408", "413", "415", "422", "503"} <= set(predict["responses"])
    result = fuzz_openapi(url(cfg), tmp_path, max_time_s=20)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failures" not in result.stdout.split("SUMMARY")[-1]


def test_canary_onnxruntime_and_auth_in_one_deploy(served, image_bytes, small_dataset_dir, test_sample):
    """One redeploy with three settings. Canary: half the traffic goes to @challenger as well (split: it answers
    them), and /model counts requests per version and the agreement with the champion. Backend onnxruntime: the
    champion's export from registration answers as torch did; the challenger (registered without one) falls
    back to torch. Auth: with a token set, every route but /health wants it. The module's last test: the app is
    left with a token."""
    import os

    from modelyard.registry import versions
    from serving.deploy import deploy

    cfg, uri, models, _ = served
    sample = np.ascontiguousarray(test_sample.images[:128])
    champion = register(uri, TASK, models["v2"], small_dataset_dir, "hash-C", sample, onnx=True).version
    versions.set_alias(uri, TASK, "champion", champion)  # with an ONNX export, whatever the comparison said
    challenger = register(uri, TASK, models["v1"], small_dataset_dir, "hash-C", sample).version
    versions.set_alias(uri, TASK, "champion", champion)  # whatever the comparison decided, these two
    versions.set_alias(uri, TASK, "challenger", challenger)
    wait_until_served(cfg, champion)
    torch_answer = post_image(cfg, image_bytes["bag"]).json()
    time.sleep(1.5)  # replicas hand their counts over every second: this request is in `before`
    before = requests.get(url(cfg, "/model"), timeout=10).json()["traffic"]
    settings = cfg.serve.model_copy(update={"canary": cfg.serve.canary.model_copy(update={"share": 0.5}),
                                            "backend": "onnxruntime"})
    os.environ[cfg.serve.auth_token_env] = "s3cret-token"
    try:
        deploy(settings, cfg.registry, model_name=TASK, tracking_uri=uri)
    finally:
        del os.environ[cfg.serve.auth_token_env]
    token = {"Authorization": "Bearer s3cret-token"}

    denied = post_image(cfg, image_bytes["bag"])
    assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
    assert requests.get(url(cfg, "/model"), timeout=10).status_code == 401
    assert requests.get(f"http://{cfg.serve.host}:{cfg.serve.port}/", timeout=10).status_code == 401
    assert requests.get(url(cfg, "/model"), headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    assert requests.get(url(cfg, "/health"), timeout=10).status_code == 200

    info = requests.get(url(cfg, "/model"), headers=token, timeout=10).json()
    assert info["backend"] == "onnxruntime" and "argmax agreement 1.0000" in info["backend_note"]
    assert info["challenger"]["version"] == challenger and info["canary"] == {"share": 0.5, "mode": "split"}
    assert info["challenger"]["backend"] == "torch" and "without an ONNX export" in info["challenger"]["backend_note"]

    answers = [post_image(cfg, image_bytes["bag"], headers=token).json() for _ in range(80)]
    versions_seen = [a["model"]["version"] for a in answers]
    time.sleep(2.5)  # replicas hand their counts over every second
    after = requests.get(url(cfg, "/model"), headers=token, timeout=10).json()["traffic"]

    def grew(version: str, key: str) -> int:
        return after[version][key] - before.get(version, {}).get(key, 0)

    to_challenger = versions_seen.count(challenger)
    assert 20 <= to_challenger <= 60, versions_seen  # 80 draws at 0.5
    assert grew(champion, "requests") == 80 and grew(challenger, "requests") == to_challenger
    assert grew(challenger, "compared_with_champion") == to_challenger
    assert after[champion]["p99_ms"] > 0
    onnx_answer = next(a for a in answers if a["model"]["version"] == champion)
    assert onnx_answer["index"] == torch_answer["index"]
    for label, score in torch_answer["scores"].items():
        assert onnx_answer["scores"][label] == pytest.approx(score, abs=1e-4)
