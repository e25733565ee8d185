"""The lightning engine end to end, as a user picks it in the training deployment's form (recipe
fashion-mlp, `train.engine: lightning`, two workers): Ray Train starts two CPU workers, each runs
`lightning.Trainer` with RayDDPStrategy and RayLightningEnvironment, and the run is evaluated, registered with
its ONNX export, promoted and served by Ray Serve like a torch-engine run."""

from __future__ import annotations

import json

import pytest
import requests

from helpers.config import small_config, write_params
from modelyard.modalities._samples import slug
from modelyard.paths import TaskPaths

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EDITS = {"data": {"train_limit": 4000, "test_limit": 1000},
         "train": {"engine": "lightning", "num_workers": 2, "epochs": 3, "batch_size": 128}}


@pytest.fixture(scope="module")
def lightning_run(prefect_api, fashion_mnist_dir, tmp_path_factory):
    import ray
    from ray import serve

    from modelyard.forms import form_defaults
    from pipelines.training import training_pipeline

    tmp = tmp_path_factory.mktemp("lightning")
    params = small_config(tmp, serve={"replicas": 1})
    params_path = write_params(params, tmp / "params.yaml")
    form = form_defaults(params_path)
    for section, values in EDITS.items():
        form[section] |= values
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_PARAMS", str(params_path))
        state = training_pipeline(recipe="fashion-mlp", **form, deploy=True, return_state=True)
    assert state.is_completed(), state
    cfg = small_config(tmp, recipe="fashion-mlp", **EDITS, serve={"port": params.serve.port, "replicas": 1})
    try:
        yield cfg, state.result()
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def test_two_lightning_workers_trained_and_the_run_was_tracked_like_any_other(lightning_run):
    from mlflow.tracking import MlflowClient

    cfg, result = lightning_run
    paths = TaskPaths.of(cfg)
    history = json.loads((paths.train_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["train/loss"] < history[0]["train/loss"]
    assert result["test"]["count"] == 1000 and result["test"]["accuracy"] > 0.78  # 3 epochs on 3.6k images
    train = json.loads((paths.train_dir / "train.json").read_text())
    assert train["num_workers"] == 2
    assert list((paths.train_dir / "tensorboard").rglob("events.out.tfevents.*"))
    uri = cfg.registry.resolved_tracking_uri()
    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(result["registry"]["run_id"])
    assert run.data.tags["train.engine"] == "lightning" and run.data.tags["train.workers"] == "2"
    assert run.data.params["train.engine"] == "lightning"
    assert len(client.get_metric_history(run.info.run_id, "val/accuracy")) == 3
    mv = client.get_model_version_by_alias(cfg.task_name, "champion")
    assert str(mv.version) == result["registry"]["version"] and mv.tags["onnx.status"] == "ok"


def test_the_served_lightning_model_answers_as_the_trained_one(lightning_run, image_bytes, class_names):
    from modelyard.inference import Predictor

    cfg, result = lightning_run
    predictor = Predictor.from_dir(TaskPaths.of(cfg).model_dir)
    right = 0
    for stem, data in image_bytes.items():
        resp = requests.post(f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(cfg.task_name)}/predict",
                             files={"file": (f"{stem}.png", data, "image/png")}, timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model"] == {"name": cfg.task_name, "version": result["registry"]["version"]}
        assert body["index"] == predictor.predict(predictor.preprocessor.decode(data)[None])[0].index
        right += slug(body["label"]) == stem
    assert right >= 6, right  # of the 10 real photos, one per class
