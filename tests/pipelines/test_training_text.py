"""The text recipes end to end, the way a user picks `rt-bert` in the Prefect form (the deployment's flow, with
a few fields edited): fetch (the real Rotten Tomatoes sentences), validate, prepare, Ray Train fine-tuning
all-MiniLM-L6-v2 with its pretrained weights, evaluate (with the most confidently wrong sentences), register
under the task's own name, promote, and serve over JSON with Ray Serve. Reload, pyfunc and HTTP agree; bad input
gets a 4xx naming the problem and the next request is answered; a new champion rolls in with no failed request.
(The LSTM baseline runs through `dvc exp run` in tests/test_dvc.py.)"""

from __future__ import annotations

import json
import threading

import pandas as pd
import pytest
import requests

from helpers.config import small_config, write_params
from helpers.serving import fuzz_openapi
from modelyard.data.dataset import load_split
from modelyard.paths import TaskPaths

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD = "a gorgeous, witty, seductive movie"


@pytest.fixture(scope="module")
def served(prefect_api, rt_polarity_dir, tmp_path_factory):
    """The flow as the form runs it: params.yaml prefilled (the image default), recipe rt-bert picked, and
    the data limits and epochs edited. Yields (the run's config, registration, serving)."""
    import ray
    from ray import serve

    from modelyard.forms import form_defaults
    from pipelines.training import training_pipeline

    tmp = tmp_path_factory.mktemp("text")
    params = small_config(tmp, serve={"replicas": 1})  # one MiniLM replica: the 2 cores are spent anyway
    params_path = write_params(params, tmp / "params.yaml")
    form = form_defaults(params_path)
    form["data"] |= {"train_limit": 1600, "test_limit": 300}
    form["train"] |= {"epochs": 1, "batch_size": 32, "num_workers": 1}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_PARAMS", str(params_path))
        state = training_pipeline(recipe="rt-bert", **form, deploy=True, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    cfg = small_config(tmp, recipe="rt-bert", data={"train_limit": 1600, "test_limit": 300},
                       train={"epochs": 1, "batch_size": 32, "num_workers": 1},
                       serve={"port": params.serve.port, "replicas": 1})
    try:
        yield cfg, result["registry"], result["serving"]
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def predict(serving, body, **kwargs):
    return requests.post(f"{serving['url']}/predict", json=body, timeout=60, **kwargs)


def test_registered_under_the_task_name_with_a_report_of_confident_mistakes(served):
    cfg, registered, serving = served
    paths = TaskPaths.of(cfg)
    assert cfg.task_name == "rt-polarity-bert" == serving["name"]
    assert json.loads((paths.train_dir / "history.json").read_text())[-1]["epoch"] == 1  # the edit won
    assert registered["promoted"] and registered["alias"] == "champion"
    evaluation = json.loads((paths.eval_dir / "evaluation.json").read_text())
    assert evaluation["count"] == 300 and evaluation["accuracy"] > 0.75  # 1,440 sentences, one epoch
    mistakes = json.loads((paths.eval_dir / "mistakes.json").read_text())
    assert len(mistakes) == 10 and all(m["label"] != m["predicted"] for m in mistakes)
    confidences = [m["confidence"] for m in mistakes]
    assert confidences == sorted(confidences, reverse=True)
    assert "## Most confidently wrong" in (paths.eval_dir / "report.md").read_text()
    spec = json.loads((paths.model_dir / "model.json").read_text())
    assert spec["preprocessing"]["kind"] == "text" and spec["preprocessing"]["max_length"] == 64


def test_one_text_and_many_texts_are_answered_over_json(served):
    cfg, registered, serving = served
    resp = predict(serving, {"text": GOOD})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["label"] == "positive" and body["index"] == 1 and body["truncated"] is False
    assert body["model"] == {"name": cfg.task_name, "version": registered["version"]}
    assert sum(body["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    many = predict(serving, {"texts": [GOOD, "a dull, lifeless and tedious mess", GOOD]}).json()
    assert [p["label"] for p in many["predictions"]] == ["positive", "negative", "positive"]
    assert many["predictions"][0]["scores"] == pytest.approx(body["scores"], abs=1e-4)
    long = predict(serving, {"text": " ".join([GOOD] * 40)}).json()
    assert long["truncated"] is True


def test_http_pyfunc_and_reload_agree(served):
    import mlflow.pyfunc

    from modelyard.inference import Predictor

    cfg, _, serving = served
    test = load_split(TaskPaths.of(cfg).dataset_dir, "test")
    texts = test.texts[:24]
    reloaded = Predictor.from_dir(TaskPaths.of(cfg).model_dir)
    offline = reloaded.predict_proba(texts)
    uri = cfg.registry.resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{cfg.task_name}@champion")
    out = pyfunc.predict(pd.DataFrame({"text": texts}))
    assert (out["index"].to_numpy() == offline.argmax(1)).all()
    http = predict(serving, {"texts": texts}).json()["predictions"]
    assert [p["index"] for p in http] == offline.argmax(1).tolist()
    for p, row in zip(http, offline):
        assert p["scores"]["positive"] == pytest.approx(float(row[1]), abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"text": ""}}, 422, "empty_text"),
        ({"json": {"text": "   \n\t"}}, 422, "empty_text"),
        ({"json": {"text": 42}}, 422, "not_a_string"),
        ({"json": {"texts": ["fine", None]}}, 422, "not_a_string"),
        ({"json": {"texts": "not a list"}}, 422, "bad_type"),
        ({"json": {"texts": ["x"] * 65}}, 413, "too_many_texts"),
        ({"json": {"texts": []}}, 422, "missing_text"),
        ({"json": {"sentence": GOOD}}, 422, "missing_text"),
        ({"data": b'{"text": "unclosed', "headers": {"content-type": "application/json"}}, 400, "bad_json"),
        ({"data": b'{"text": "caf\xe9"}', "headers": {"content-type": "application/json"}}, 400, "bad_encoding"),
        ({"data": GOOD.encode(), "headers": {"content-type": "text/plain"}}, 415, "not_json"),
        ({"files": {"file": ("a.png", b"\x89PNG", "image/png")}}, 415, "not_json"),
        ({"data": b'{"text": "' + b"x" * (5 * 1024 * 1024) + b'"}',
          "headers": {"content-type": "application/json"}}, 413, "body_too_large"),
    ],
    ids=["empty", "whitespace", "number", "null-in-list", "texts-not-list", "65-texts", "no-texts", "other-field",
         "invalid-json", "invalid-utf8", "text-plain", "multipart", "5MB"],
)
def test_bad_input_gets_a_json_4xx_naming_it_and_the_next_request_is_answered(served, kwargs, status, code):
    _, _, serving = served
    resp = requests.post(f"{serving['url']}/predict", timeout=60, **kwargs)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == code and body["detail"]
    assert predict(serving, {"text": GOOD}).status_code == 200


def test_openapi_documents_the_json_body_and_survives_fuzzing(served, tmp_path):
    """A text model's app documents only the JSON body and its limits; schemathesis, every check on, finds
    no 5xx, no undocumented status and no 4xx without the {"error", "detail"} body."""
    _, _, serving = served
    schema = requests.get(f"{serving['url']}/openapi.json", timeout=10).json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json"}
    text = body["application/json"]["schema"]["oneOf"][1]["properties"]["texts"]
    assert text["maxItems"] == 64 and text["items"]["maxLength"] == 100_000
    result = fuzz_openapi(serving["url"], tmp_path, max_time_s=15)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_a_promoted_text_model_rolls_in_with_no_failed_request(served):
    from modelyard.registry import tracking
    from modelyard.registry import versions as registry_versions
    from serving.deploy import deploy

    cfg, registered, _ = served
    uri = cfg.registry.resolved_tracking_uri()
    run_id = tracking.start_run(uri, cfg.registry.experiment, params={"note": "retrained"})
    new_version = registry_versions.log_model(uri, run_id, TaskPaths.of(cfg).model_dir, cfg.task_name,
                                              input_example=pd.DataFrame({"text": [GOOD]}), pip_requirements=["torch"])
    registry_versions.set_alias(uri, cfg.task_name, "champion", new_version)
    statuses, versions, stop = [], set(), threading.Event()

    def traffic():
        while not stop.is_set():
            resp = requests.post(f"{served[2]['url']}/predict", json={"text": GOOD}, timeout=60)
            statuses.append(resp.status_code)
            if resp.ok:
                versions.add(resp.json()["model"]["version"])

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        now = deploy(cfg.serve, cfg.registry, model_name=cfg.task_name, tracking_uri=uri)
    finally:
        stop.set()
        thread.join()
    assert now["version"] == new_version != registered["version"]
    assert statuses and all(s == 200 for s in statuses), statuses
    assert registered["version"] in versions

