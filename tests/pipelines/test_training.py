"""The training flow end to end on a small real subset, as the deployment's Run button runs it (the form
prefilled from params.yaml, untouched): Prefect (a test API server) runs the flow, Ray Train trains on local Ray,
MLflow (sqlite) registers and promotes, Ray Serve serves the champion over HTTP, and the run is published to its
task's stable paths from a directory of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from helpers.config import small_config, write_params
from modelyard.modalities._samples import slug
from modelyard.paths import TaskPaths

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def pipeline_run(prefect_api, fashion_mnist_dir, tmp_path_factory):
    """One flow run with deploy=True; yields (config, flow state, result). Tears Serve and Ray down after."""
    import ray
    from ray import serve

    from modelyard.forms import form_defaults
    from pipelines.training import training_pipeline

    tmp = tmp_path_factory.mktemp("pipeline")
    cfg = small_config(tmp, train={"progress_every_s": 0.5})  # epochs of seconds here: lines every half second
    params = write_params(cfg, tmp / "params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_PARAMS", str(params))
        # Sections as plain dicts, the way the deployment's form sends them: Prefect validates them into models.
        state = training_pipeline(**form_defaults(params), deploy=True, return_state=True)
    try:
        yield cfg, state, state.result()
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def url(cfg, path: str) -> str:
    """`path` on the task's own application (/<task>/...)."""
    return f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(cfg.task_name)}{path}"


def test_flow_completes_with_every_stage_and_registers_a_champion(pipeline_run):
    cfg, state, result = pipeline_run
    assert state.is_completed()
    assert result["registry"]["promoted"] is True and result["registry"]["alias"] == "champion"
    assert result["test"]["count"] == 1000
    history = json.loads((TaskPaths.of(cfg).train_dir / "history.json").read_text())
    assert len(history) == cfg.train.epochs and history[-1]["train/loss"] < history[0]["train/loss"]
    assert result["test"]["accuracy"] > 0.70  # 2 epochs on 3.6k real images; chance is 0.10


def test_the_run_worked_in_a_directory_of_its_own_and_published_it_to_its_tasks_paths(pipeline_run):
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
    assert doc["dvc"].startswith("not recorded in DVC: ") and "is not a DVC project" in doc["dvc"]  # a test dir
    assert (runs_root(cfg) / "latest").resolve() == run_dir.resolve()
    run_paths = TaskPaths.of(run_config(cfg, run_dir.resolve()))
    for src, dst in published_paths(run_config(cfg, run_dir.resolve()), cfg):  # the run's copy, file for file
        if src == run_paths.search_dir:  # only a search's run has one
            assert not src.exists() and not dst.exists()
            continue
        assert src.exists(), src
        files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file()) if src.is_dir() else [Path()]
        assert files == (sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file()) if dst.is_dir() else [Path()])
        assert all((src / f).read_bytes() == (dst / f).read_bytes() for f in files), src
    assert (run_paths.dataset_dir / "limits.txt").read_text() == "train_limit=4000\ntest_limit=1000\n"
    assert TaskPaths.of(cfg).task_dir == Path(cfg.paths.artifacts_dir) / "fashion_mnist" / "cnn"
    uri = cfg.registry.resolved_tracking_uri()
    tags = MlflowClient(uri).get_run(result["registry"]["run_id"]).data.tags
    assert tags["modelyard.outputs"] == str(run_paths.task_dir.resolve())
    assert json.loads((run_paths.train_dir / "train.json").read_text())["run_id"] == result["registry"]["run_id"]
    assert not (run_dir / "data" / "raw").exists()  # the raw download stayed the shared one


def test_prefect_recorded_the_tasks_the_report_artifacts_and_trainings_progress(pipeline_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        LogFilter,
        LogFilterFlowRunId,
    )

    cfg, state, _ = pipeline_run
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    names = {t.name.rsplit("-", 1)[0] for t in tasks}
    assert {"fetch", "validate", "prepare", "train", "evaluate", "register", "publish", "deploy"} <= names
    assert all(t.state.is_completed() for t in tasks)
    by_key = {a.key: a for a in artifacts}
    assert {"data-validation", "evaluation-report", "pipeline-report"} <= set(by_key)
    assert "accuracy" in by_key["evaluation-report"].data and "champion" in by_key["pipeline-report"].data
    # Rank 0's lines reach the flow run's log (what the Prefect UI and `make run` show) through the driver.
    messages = [entry.message for entry in logs]
    assert sum(m.startswith(f"epoch {e}/{cfg.train.epochs}: train/loss=") for m in messages for e in (1, 2)) == 2, messages
    assert any(m.startswith("precision: ") for m in messages)
    progress = [m for m in messages if " left in the epoch" in m]  # inside an epoch: step k/n, samples/s, time left
    assert progress and all(m.startswith(("epoch 1/2: step ", "epoch 2/2: step ")) and " samples/s, " in m
                            for m in progress), progress


def test_mlflow_run_has_params_metrics_artifacts_and_lineage(pipeline_run):
    from mlflow.tracking import MlflowClient

    cfg, _, result = pipeline_run
    uri = cfg.registry.resolved_tracking_uri()
    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(result["registry"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == str(cfg.train.epochs)
    assert run.data.params["model.width"] == "32"  # the family's own fields, resolved, not only what was given
    assert run.data.metrics["test/accuracy"] == pytest.approx(result["test"]["accuracy"])
    assert len(client.get_metric_history(run.info.run_id, "val/accuracy")) == cfg.train.epochs  # from rank 0
    assert len(run.data.tags["git.commit"]) == 40
    assert run.data.tags["dvc.md5.dataset"].endswith(".dir")
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"evaluation", "tensorboard", "validation", "report.md"} <= top
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in evaluation
    mv = client.get_model_version_by_alias(cfg.task_name, "champion")
    assert str(mv.version) == result["registry"]["version"]
    # Exported to ONNX at registration, parity checked on 128 real test images and recorded on the version.
    assert mv.tags["onnx.status"] == "ok" and mv.tags["onnx.rows"] == "128", mv.tags
    assert float(mv.tags["onnx.max_abs_logit_diff"]) < 1e-3 and mv.tags["onnx.argmax_agreement"] == "1.0"
    assert "## ONNX\n\nExported" in (TaskPaths.of(cfg).register_dir / "report.md").read_text()


def offline_predictor(cfg):
    from modelyard.inference import Predictor

    return Predictor.from_dir(TaskPaths.of(cfg).model_dir)


def test_champion_loads_as_an_mlflow_pyfunc(pipeline_run, test_sample, class_names):
    import mlflow.pyfunc

    cfg, _, _ = pipeline_run
    mlflow.set_registry_uri(cfg.registry.resolved_tracking_uri())
    mlflow.set_tracking_uri(cfg.registry.resolved_tracking_uri())
    model = mlflow.pyfunc.load_model(f"models:/{cfg.task_name}@champion")
    out = model.predict(test_sample.images[:200])
    assert len(out) == 200 and set(out["label"]) <= set(class_names)
    expected = offline_predictor(cfg).predict_proba(test_sample.images[:200]).argmax(axis=1)
    assert (out["index"].to_numpy() == expected).all()  # the registered model is the trained one
    assert (expected == test_sample.labels[:200]).mean() > 0.7


def test_the_served_model_classifies_real_images_as_the_trained_one_does(pipeline_run, image_bytes, class_names):
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
        assert body["model"] == {"name": cfg.task_name, "version": result["registry"]["version"]}
        answers[stem] = body["label"]
        # Same bytes through the offline Predictor: the endpoint adds no preprocessing drift.
        offline = predictor.predict(predictor.preprocessor.decode(data)[None])[0]
        assert body["index"] == offline.index
        assert body["scores"][offline.label] == pytest.approx(offline.scores[offline.label], abs=1e-5)
    correct = sum(answers[slug(label)] == label for label in class_names)
    assert correct >= 5, answers  # one real image per class from a 2-epoch model; chance is 1 in 10
    info = requests.get(url(cfg, "/model"), timeout=10).json()
    assert info["version"] == result["registry"]["version"] and info["run_id"] == result["registry"]["run_id"]
    assert info["test_metrics"]["accuracy"] == pytest.approx(result["test"]["accuracy"])
    index = requests.get(f"http://{cfg.serve.host}:{cfg.serve.port}/", timeout=10).json()
    assert [(a["task"], a["version"]) for a in index["apps"]] == [(cfg.task_name, result["registry"]["version"])]
