"""The training code paths that only run on a GPU: precision chosen from the device, fp16 with GradScaler,
bf16 autocast, data resident on the device. Skipped where there is no CUDA device (CI has none); run on a
GPU machine with `pytest -m gpu tests/gpu` and real Fashion-MNIST fetched into tests/.data."""

from __future__ import annotations

import time

import pytest
import torch

from modelyard.data.augment import AugmentPolicy, fit_normalization
from modelyard.data.dataset import load_split
from modelyard.models import build_model
from modelyard.training import loop

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def resident(fashion_mnist_dir):
    """The full real train/test splits as uint8 tensors on the GPU."""
    train, test = load_split(fashion_mnist_dir, "train"), load_split(fashion_mnist_dir, "test")
    mean, std = fit_normalization(train.images)
    dev = torch.device("cuda")
    return {"train": (torch.from_numpy(train.images).to(dev), torch.from_numpy(train.labels).to(dev)),
            "test": (torch.from_numpy(test.images).to(dev), torch.from_numpy(test.labels).to(dev)),
            "mean": mean, "std": std}


def test_auto_precision_picks_bf16_on_a_gpu_that_has_it():
    mode, why = loop.resolve_precision("auto", torch.device("cuda"))
    assert mode == ("bf16" if torch.cuda.is_bf16_supported() else "none"), why


@pytest.mark.parametrize("mode", ["auto", "fp16"])
def test_training_on_the_gpu_reaches_accuracy(resident, mode, capsys):
    dev = torch.device("cuda")
    chosen, _ = loop.resolve_precision(mode, dev)
    precision = loop.Precision(device=dev, mode=chosen, channels_last=True)
    assert (precision.scaler is not None) == (chosen == "fp16")
    torch.manual_seed(0)
    model = build_model("cnn", width=32).to(dev).to(memory_format=torch.channels_last)
    images, labels = resident["train"]
    epochs, batch = 3, 256
    steps = loop.steps_per_epoch(len(labels), batch)
    opt = loop.build_optimizer(model, 0.1, 0.9, 5e-4)
    sched = loop.build_scheduler(opt, total_steps=steps * epochs, warmup_steps=steps)
    gen = torch.Generator(device=dev).manual_seed(0)
    policy = AugmentPolicy()
    torch.cuda.synchronize()
    start = time.perf_counter()
    losses = []
    for _ in range(epochs):
        out = loop.train_epoch(model, images, labels, torch.arange(len(labels), device=dev), batch_size=batch,
                               optimizer=opt, scheduler=sched, precision=precision, policy=policy,
                               mean=resident["mean"], std=resident["std"], gen=gen, label_smoothing=0.1)
        losses.append(out["loss_sum"] / out["count"])
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    test_images, test_labels = resident["test"]
    scored = loop.evaluate_indices(model, test_images, test_labels, torch.arange(len(test_labels), device=dev),
                                   batch_size=1000, precision=precision, mean=resident["mean"], std=resident["std"])
    accuracy = scored["correct"] / scored["count"]
    with capsys.disabled():
        print(f"\n{torch.cuda.get_device_name()}: {mode} -> {chosen}: {epochs} epochs in {seconds:.1f} s "
              f"({epochs * steps * batch / seconds:,.0f} samples/s), test accuracy {accuracy:.4f}")
    assert losses[-1] < losses[0] and accuracy > 0.88
