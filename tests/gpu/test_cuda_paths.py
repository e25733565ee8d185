"""The training code paths that only run on a GPU, for every model family: precision chosen from the device,
fp16 with GradScaler, bf16 autocast, data resident on the device, cached backbone features. Through the
pipeline's own worker code without Ray (`modelyard.training.local`). Skipped where there is no CUDA device
(CI has none); run on a GPU machine with `pytest -m gpu tests/gpu` and real Fashion-MNIST in tests/.data."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO

from modelyard.config import load_config
from modelyard.data.augment import prepare_splits
from modelyard.data.dataset import load_split
from modelyard.inference import Predictor
from modelyard.training import loop
from modelyard.training.local import train_local

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_auto_precision_picks_bf16_on_a_gpu_that_has_it():
    mode, why = loop.resolve_precision("auto", torch.device("cuda"))
    assert mode == ("bf16" if torch.cuda.is_bf16_supported() else "none"), why


@pytest.mark.parametrize(("recipe", "overrides", "bound"), [
    ("fashion-cnn", {"train": {"epochs": 3, "batch_size": 256}}, 0.88),
    ("fashion-cnn", {"train": {"epochs": 3, "batch_size": 256, "mixed_precision": "fp16"}}, 0.88),
    ("fashion-mlp", {"train": {"epochs": 3}}, 0.84),
    ("fashion-cnn", {"model": {"name": "resnet18"}, "train": {"epochs": 2, "batch_size": 256}}, 0.88),
    ("fashion-transfer", {"train": {"epochs": 5}}, 0.80),
    ("fashion-transfer-finetune", {"train": {"epochs": 1, "batch_size": 256}}, 0.86),
])
def test_every_family_trains_on_the_gpu(fashion_mnist_dir, tmp_path, recipe, overrides, bound, capsys):
    cfg = load_config(REPO / "params.yaml", {"recipe": recipe, "data": {"data_dir": str(fashion_mnist_dir.parent)},
                                             "augment": {"prepared_dir": str(tmp_path / "prepared")}, **overrides})
    prepared = prepare_splits(fashion_mnist_dir, cfg.augment)
    model, spec, history, seconds = train_local(cfg, fashion_mnist_dir, prepared, device="cuda")
    test = load_split(fashion_mnist_dir, "test")
    accuracy = float((Predictor(model, spec, "cuda").predict_proba(test.images).argmax(1) == test.labels).mean())
    mode = loop.resolve_precision(cfg.train.mixed_precision, torch.device("cuda"))[0]
    with capsys.disabled():
        print(f"\n{torch.cuda.get_device_name()}: {recipe} {overrides} precision {mode}: {len(history)} epochs in "
              f"{seconds:.1f} s, test accuracy {accuracy:.4f}")
    assert history[-1]["train/loss"] < history[0]["train/loss"] or len(history) == 1
    assert accuracy > bound


@pytest.mark.parametrize(("recipe", "overrides", "bound"), [
    ("rt-bert", {"train": {"epochs": 2}}, 0.84),
    ("rt-bert", {"train": {"epochs": 2, "mixed_precision": "fp16"}}, 0.84),
    ("rt-lstm", {"train": {"epochs": 4}}, 0.72),
])
def test_text_families_train_on_the_gpu(rt_polarity_dir, tmp_path, recipe, overrides, bound, capsys):
    cfg = load_config(REPO / "params.yaml", {"recipe": recipe, "data": {"data_dir": str(rt_polarity_dir.parent)},
                                             "augment": {"prepared_dir": str(tmp_path / "prepared")}, **overrides})
    prepared = prepare_splits(rt_polarity_dir, cfg.augment)
    model, spec, history, seconds = train_local(cfg, rt_polarity_dir, prepared, device="cuda")
    test = load_split(rt_polarity_dir, "test")
    accuracy = float((Predictor(model, spec, "cuda").predict_proba(test.texts).argmax(1) == test.labels).mean())
    mode = loop.resolve_precision(cfg.train.mixed_precision, torch.device("cuda"))[0]
    with capsys.disabled():
        print(f"\n{torch.cuda.get_device_name()}: {recipe} {overrides} precision {mode}: {len(history)} epochs in "
              f"{seconds:.1f} s, test accuracy {accuracy:.4f}")
    assert accuracy > bound
