"""The training code paths that only run on a GPU, for every model family: precision chosen from the device,
fp16 with GradScaler, bf16 autocast, data resident on the device, cached backbone features. Through the
pipeline's own worker code without Ray (`modelyard.training.local`). Skipped where there is no CUDA device
(CI has none); run on a GPU machine with `pytest -m gpu tests/training/test_gpu.py` and real data in
tests/.data.

What a step computed in is read from the steps themselves: the dtype of the logits every training step
produced (autocast's dtype, or fp32 without it) and the device its batch was on."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers.paths import REPO
from modelyard.config import load_config
from modelyard.data.dataset import load_split
from modelyard.data.prepare import prepare_splits
from modelyard.inference import Predictor
from modelyard.models import family_config
from modelyard.training import loop
from modelyard.training.local import train_local
from modelyard.training.worker import LocalSession

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def train_on_gpu(recipe: str, overrides: dict, dataset_dir: Path, tmp: Path, monkeypatch) -> SimpleNamespace:
    """Train `recipe` (with `overrides`) on the GPU with the worker code, recording what each training step's
    forward pass produced: the logits' dtype and the device of the batch."""
    steps: list[tuple[torch.dtype, str]] = []
    logits_of = loop.logits_of

    def recording(model, x):
        logits = logits_of(model, x)
        if model.training:  # a training step (evaluation and feature caching run in eval mode)
            batch = next(iter(x.values())) if isinstance(x, dict) else x
            steps.append((logits.dtype, batch.device.type))
        return logits

    monkeypatch.setattr(loop, "logits_of", recording)
    cfg = load_config(REPO / "params.yaml", {"recipe": recipe, **overrides})
    prepared = prepare_splits(dataset_dir, cfg.prepare, tmp / "prepared")
    session = LocalSession("cuda")
    model, spec, history, seconds = train_local(cfg, family_config(cfg.model), dataset_dir, prepared, session=session)
    return SimpleNamespace(cfg=cfg, model=model, spec=spec, history=history, seconds=seconds,
                           state=session.last_state, dtypes={d for d, _ in steps}, devices={d for _, d in steps})


def expected_precision(configured: str) -> str:
    """What the steps must run in on this GPU: fp16 where asked for, else bf16 where the device has it."""
    if configured == "fp16":
        return "fp16"
    return "bf16" if torch.cuda.is_bf16_supported() else "none"


def check_precision(run: SimpleNamespace) -> str:
    mode = expected_precision(run.cfg.train.mixed_precision)
    assert run.dtypes == {DTYPES[mode]}, f"steps computed in {run.dtypes}, expected {mode}"
    assert run.devices == {"cuda"}  # every batch was on the device
    assert run.state["precision"]["mode"] == mode  # and the checkpoint records what ran
    return mode


def test_auto_precision_runs_the_steps_in_bf16_on_a_gpu_that_has_it(small_dataset_dir, tmp_path, monkeypatch):
    run = train_on_gpu("fashion-cnn", {"train": {"epochs": 1, "batch_size": 256}}, small_dataset_dir, tmp_path,
                       monkeypatch)
    assert run.cfg.train.mixed_precision == "auto"
    check_precision(run)
    assert torch.cuda.get_device_name() in run.state["precision"]["reason"]


@pytest.mark.parametrize(("recipe", "overrides", "bound"), [
    ("fashion-cnn", {"train": {"epochs": 3, "batch_size": 256}}, 0.88),
    ("fashion-cnn", {"train": {"epochs": 3, "batch_size": 256, "mixed_precision": "fp16"}}, 0.88),
    ("fashion-mlp", {"train": {"epochs": 3}}, 0.84),
    ("fashion-cnn", {"model": {"name": "resnet18"}, "train": {"epochs": 2, "batch_size": 256}}, 0.88),
    ("fashion-transfer", {"train": {"epochs": 5}}, 0.80),
    ("fashion-transfer-finetune", {"train": {"epochs": 1, "batch_size": 256}}, 0.86),
])
def test_every_image_family_trains_on_the_gpu(fashion_mnist_dir, tmp_path, monkeypatch, recipe, overrides, bound,
                                              capsys):
    run = train_on_gpu(recipe, overrides, fashion_mnist_dir, tmp_path, monkeypatch)
    mode = check_precision(run)
    test = load_split(fashion_mnist_dir, "test")
    accuracy = float((Predictor(run.model, run.spec, "cuda").predict_proba(test.inputs).argmax(1)
                      == test.labels).mean())
    with capsys.disabled():
        print(f"\n{torch.cuda.get_device_name()}: {recipe} {overrides} precision {mode}: {len(run.history)} epochs "
              f"in {run.seconds:.1f} s, test accuracy {accuracy:.4f}")
    if recipe == "fashion-transfer":  # nothing augmented: the frozen backbone's features were computed once
        assert run.state["features_cached"]
    assert run.history[-1]["train/loss"] < run.history[0]["train/loss"] or len(run.history) == 1
    assert accuracy > bound


@pytest.mark.parametrize(("recipe", "overrides", "bound"), [
    ("rt-bert", {"train": {"epochs": 2}}, 0.84),
    ("rt-bert", {"train": {"epochs": 2, "mixed_precision": "fp16"}}, 0.84),
    ("rt-lstm", {"train": {"epochs": 4}}, 0.72),
])
def test_text_families_train_on_the_gpu(rt_polarity_dir, tmp_path, monkeypatch, recipe, overrides, bound, capsys):
    run = train_on_gpu(recipe, overrides, rt_polarity_dir, tmp_path, monkeypatch)
    mode = check_precision(run)
    test = load_split(rt_polarity_dir, "test")
    accuracy = float((Predictor(run.model, run.spec, "cuda").predict_proba(test.inputs).argmax(1)
                      == test.labels).mean())
    with capsys.disabled():
        print(f"\n{torch.cuda.get_device_name()}: {recipe} {overrides} precision {mode}: {len(run.history)} epochs "
              f"in {run.seconds:.1f} s, test accuracy {accuracy:.4f}")
    assert accuracy > bound
