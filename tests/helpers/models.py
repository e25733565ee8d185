"""Small real models for registry and serving tests: an MLP trained for an epoch with the plain loop on real
Fashion-MNIST (seconds), saved in the project's format and registered as MLflow versions."""

from __future__ import annotations

from pathlib import Path

import torch

from modelyard.artifact import ModelSpec, save_model_dir
from modelyard.data.dataset import load_split
from modelyard.modalities.image import ImagePolicy, ImagePreprocessor
from modelyard.modalities.image.preprocess import ImageBatches
from modelyard.training import loop
from modelyard.training.precision import Precision

GRAY_28 = ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.286,), (0.353,))


def make_model(tmp_path: Path, name: str, dataset_dir: Path, class_names: list[str], *, train_epochs: int) -> Path:
    """An MLP trained for `train_epochs` epochs with the plain loop (0 = untrained), saved under tmp_path/name."""
    torch.manual_seed(0)
    spec = ModelSpec(family="mlp", args={"in_features": 784, "num_classes": len(class_names), "hidden": 64,
                                         "depth": 1, "dropout": 0.0},
                     labels=class_names, preprocessing=GRAY_28.to_dict())
    model = spec.build()
    train = load_split(dataset_dir, "train")
    batches = loop.ResidentBatches({"images": torch.from_numpy(train.images), "labels": torch.from_numpy(train.labels)},
                                   ImageBatches(GRAY_28, ImagePolicy()))
    optimizer = loop.build_optimizer(model, 0.05, 0.9, 0.0)
    for epoch in range(train_epochs):
        loop.train_epoch(model, batches.train(torch.arange(len(train)), 64, torch.Generator().manual_seed(epoch)),
                         optimizer=optimizer, scheduler=None, precision=Precision(device=torch.device("cpu")))
    return save_model_dir(model.eval(), spec, tmp_path / name)


def register(uri: str, name: str, model_dir: Path, dataset_dir: Path, test_hash: str, sample, *, onnx: bool = False,
             reference=None):
    """Log `model_dir` as a new version of `name` (with its ONNX export and parity check on `sample` when `onnx`,
    its reference profile on `reference` inputs when given) and promote it if it scores at least the champion."""
    import shutil
    import tempfile

    from modelyard.evaluation.evaluate import score_model_dir
    from modelyard.inference.onnx_export import export_and_check
    from modelyard.registry import promotion, tracking, versions

    run_id = tracking.start_run(uri, "registry-test", params={"model": model_dir.name})
    with tempfile.TemporaryDirectory() as tmp:
        logged = Path(shutil.copytree(model_dir, Path(tmp) / "model")) if onnx or reference is not None else model_dir
        if onnx:
            assert export_and_check(logged, sample)["status"] == "ok"
        if reference is not None:
            from modelyard.monitoring.profile import write_reference

            write_reference(logged, reference, name)
        version = versions.log_model(uri, run_id, logged, name, input_example=sample[:2], pip_requirements=["torch"])
    accuracy = score_model_dir(model_dir, dataset_dir)["accuracy"]
    decision = promotion.promote_if_better(
        uri, name, version, metric="test.accuracy", value=accuracy, test_set_hash=test_hash,
        score_champion=lambda d: score_model_dir(d, dataset_dir)["accuracy"])
    tracking.end_run(uri, run_id)
    return decision


def register_text_lstm(uri: str, name: str, rt_polarity_dir: Path, tmp: Path, *, onnx: bool = False):
    """A small BiLSTM over RT polarity's tokenizer ids (seeded initial weights: its answers are fixed, not good),
    registered as `name`'s champion (with its ONNX export when `onnx`); returns its model directory."""
    from modelyard.data.datasets import get_dataset
    from modelyard.modalities import get_modality
    from modelyard.models import family_config

    family = family_config({"name": "lstm", "hidden": 32, "embedding_dim": 32})
    pre = get_modality("text").fit_preprocessor(family.preprocessing(), {}, get_dataset("rt_polarity").schema)
    spec = ModelSpec(family=family.name, args=family.builder_args(pre.model_input(), 2),
                     labels=["negative", "positive"], preprocessing=pre.to_dict())
    torch.manual_seed(0)
    text_dir = save_model_dir(spec.build().eval(), spec, tmp / "lstm")
    sentences = load_split(rt_polarity_dir, "test").texts
    assert register(uri, name, text_dir, rt_polarity_dir, "hash-T", sentences[:2], onnx=onnx).promoted
    return text_dir
