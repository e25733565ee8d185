"""The model card of a registered version (modelyard.registry.card), through the real register stage: a small MLP
trained for an epoch on real Fashion-MNIST, evaluated and registered into a real sqlite MLflow. The card is the
version's MLflow description, sits beside the weights in the registered artifact (what GET /<task>/model returns),
and its numbers are the evaluation's and the dataset's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers.config import small_config
from helpers.models import make_model
from modelyard import stages
from modelyard.data.dataset import read_metadata
from modelyard.paths import TaskPaths
from modelyard.registry import tracking, versions
from modelyard.registry.card import CARD_FILE, read_card, render_card

pytestmark = pytest.mark.integration


def _register(tmp: Path, dataset_dir: Path, class_names: list[str], **registry) -> tuple:
    """Train (one epoch of the plain loop), evaluate and register with the stages; returns (cfg, paths, version,
    the card register/ holds)."""
    cfg = small_config(tmp, recipe="fashion-mlp", paths={"data_dir": str(dataset_dir.parent)}, registry=registry)
    paths = TaskPaths.of(cfg)
    if not paths.model_dir.is_dir():
        make_model(paths.train_dir, "model", dataset_dir, class_names, train_epochs=1)
    uri = cfg.registry.resolved_tracking_uri()
    run_id = tracking.start_run(uri, cfg.registry.experiment, params=cfg.flat())
    (paths.train_dir / "train.json").write_text(json.dumps({"run_id": run_id, "wall_time_s": 2.0, "epochs": 1,
                                                           "num_workers": 1, "device": "cpu", "precision": "none"}))
    stages.evaluate(cfg)
    version = stages.register(cfg)["version"]
    return cfg, paths, str(version), json.loads((paths.register_dir / CARD_FILE).read_text())


@pytest.fixture(scope="module")
def registered(tmp_path_factory, small_dataset_dir, class_names):
    return _register(tmp_path_factory.mktemp("card"), small_dataset_dir, class_names)


def test_the_version_description_is_the_card(registered, class_names):
    cfg, paths, version, card = registered
    uri = cfg.registry.resolved_tracking_uri()
    description = versions.get_version(uri, cfg.task_name, version=version).description
    evaluation = json.loads((paths.eval_dir / "evaluation.json").read_text())

    assert description == render_card(card) and description.startswith(f"# {cfg.task_name} v{version}\n")
    assert description.splitlines()[2].startswith("Classifies images like those of `fashion_mnist` into 10 classes")
    for label in class_names:  # one row per class, with the evaluation's numbers
        m = evaluation["per_class"][label]
        assert f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']:,} |" \
            in description, label
    assert re.search(r"## ONNX\n\nExported; .* max \|logit diff\| \d\.\d\de-\d\d, argmax agreement 1\.0000", description)
    single_ms = float(re.search(r"([\d.]+) ms per single input", description).group(1))
    assert single_ms > 0 and card["latency"]["batch_per_row_ms"] > 0 and card["latency"]["backend"] == "onnxruntime"
    assert "| `not_an_image` | 415 |" in description and "| `image_too_small` | 422 |" in description
    assert "| `body_too_large` | 413 | the file is over 4,194,304 bytes |" in description
    curl = re.search(r"^curl -F file=@(\S+) (\S+)$", description, re.MULTILINE)
    assert curl.group(2) == f"http://127.0.0.1:{cfg.serve.port}/{cfg.task_name}/predict"
    assert Path(curl.group(1)).resolve().parent == paths.samples_dir.resolve() and Path(curl.group(1)).is_file()


def test_the_cards_numbers_are_the_evaluations_the_datasets_and_the_runs(registered):
    cfg, paths, version, card = registered
    evaluation = json.loads((paths.eval_dir / "evaluation.json").read_text())
    meta = read_metadata(paths.dataset_dir)
    tags = versions.get_version(cfg.registry.resolved_tracking_uri(), cfg.task_name, version=version).tags

    assert card["version"] == version and card["task"] == cfg.task_name and card["modality"] == "image"
    assert {k: card["test"][k] for k in ("accuracy", "macro_f1", "count", "test_set_sha256")} == \
        {k: evaluation[k] for k in ("accuracy", "macro_f1", "count", "test_set_sha256")}
    assert card["test"]["per_class"] == {label: {k: m[k] for k in ("precision", "recall", "f1", "support")}
                                         for label, m in evaluation["per_class"].items()}
    assert card["data"]["train"] == {k: meta["splits"]["train"][k] for k in ("count", "sha256")} == \
        {"count": 4000, "sha256": meta["splits"]["train"]["sha256"]}
    assert card["data"]["test"]["count"] == 1000 and card["data"]["feedback"] is None
    assert card["onnx"]["status"] == tags["onnx.status"] == "ok"
    assert card["onnx"]["max_abs_logit_diff"] == pytest.approx(float(tags["onnx.max_abs_logit_diff"]))
    trained = card["trained_from"]
    assert trained["run_id"] == json.loads((paths.train_dir / "train.json").read_text())["run_id"]
    assert (trained["recipe"], trained["family"], trained["epochs"]) == ("fashion-mlp", "mlp", 1)
    assert (trained["batch_size"], trained["learning_rate"], trained["engine"]) == \
        (cfg.train.batch_size, cfg.train.learning_rate, cfg.train.engine)
    assert trained["git_commit"] == tags["git.commit"] and trained["dataset_md5"] == tags["dvc.md5.dataset"]


def test_the_registered_artifact_carries_the_card_and_the_run_logs_it(registered):
    """What serving's _load reads (`read_card` on the fetched model directory), and the run's artifacts."""
    import mlflow

    cfg, paths, version, card = registered
    uri = cfg.registry.resolved_tracking_uri()
    with versions.fetched_model_dir(uri, cfg.task_name, version=version) as (model_dir, _):
        assert read_card(model_dir, version) == card
    assert (paths.register_dir / "model_card.md").read_text() == render_card(card)
    logged = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(card["trained_from"]["run_id"])}
    assert {CARD_FILE, "model_card.md"} <= logged
    assert read_card(paths.train_dir / "model", version) is None  # the train stage's own output has no card


def test_a_long_card_is_cut_to_mlflows_description_limit(registered):
    *_, card = registered
    full = render_card(card)
    short = render_card(card, max_chars=len(full) - 1)
    assert len(short) < len(full) and "more classes in model_card.json" in short
    assert short.count("\n| ") < full.count("\n| ")


def test_feedback_rows_merged_into_train_are_on_the_card(registered):
    """dataset.json's `feedback` entry (modelyard.data.fetch writes it when feedback labels joined train)."""
    from modelyard.registry.card import _data

    _, paths, _, card = registered
    feedback = {"name": "feedback", "sha256": "ab" * 32, "train_rows": 37, "holdout_rows": 10}
    data = _data(read_metadata(paths.dataset_dir) | {"feedback": feedback}, {})
    assert data["feedback"] == {"train_rows": 37, "sha256": "ab" * 32, "holdout_rows": 10}
    assert "Train includes 37 labelled feedback rows" in render_card(card | {"data": data})


def test_a_version_registered_without_onnx_has_a_card_that_says_so(registered, small_dataset_dir, class_names):
    cfg, paths, _, _ = registered
    base = Path(cfg.paths.artifacts_dir).parent  # the same store and trained model, a second version
    _, _, version, card = _register(base, small_dataset_dir, class_names, export_onnx=False)
    description = versions.get_version(cfg.registry.resolved_tracking_uri(), cfg.task_name,
                                       version=version).description
    assert card["onnx"]["status"] == "not exported"
    assert "Not exported (registry.export_onnx was off at registration): serving runs it with torch." in description
    assert card["latency"]["backend"] == "torch" and card["latency"]["single_p50_ms"] > 0
