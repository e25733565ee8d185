"""modelyard's training step (augment + autocast + SGD step via `training.loop`) against the same work
written inline in plain PyTorch, in one process, on real Fashion-MNIST images.

    python -m bench.train_step [--steps 60] [--batch 128] [--precision auto|bf16|none] [--threads 2]

Prints samples/s for both (median step time, the two kinds alternating step by step) and the ratio
(modelyard / plain); the target is at least 0.97. Absolute numbers depend on the machine; only the ratio is comparable across machines.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from modelyard.config import DataConfig
from modelyard.data.augment import AugmentPolicy, augment_batch
from modelyard.data.dataset import load_split
from modelyard.data.fetch import fetch_dataset
from modelyard.models import build_model
from modelyard.runtime import configure_environment
from modelyard.training import loop


def plain_step(model, opt, images, labels, idx, gen, mean, std, amp):
    # The same computation, written out: crop(pad 2) + flip + normalise, autocast, SGD.
    dev = images.device
    x = images[idx].float().div(255).unsqueeze(1)
    b = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (b,), generator=gen, device=dev)
    dx = torch.randint(0, 5, (b,), generator=gen, device=dev)
    rows = (dy[:, None] + torch.arange(28, device=dev))[:, :, None]
    cols = (dx[:, None] + torch.arange(28, device=dev))[:, None, :]
    x = padded.permute(0, 2, 3, 1)[torch.arange(b, device=dev)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(b, generator=gen, device=dev) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    x = (x - mean) / std
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure_interleaved(steps: dict[str, Callable[[], None]], n: int, batch: int, sync=lambda: None) -> dict[str, float]:
    """samples/s of each step from the median of `n` timed calls, the kinds alternating call by call.

    Alternating (and swapping which goes first) exposes both to the same machine state, so drift in clock
    speed or background load cancels out of the ratio instead of deciding it.
    """
    for fn in steps.values():  # warm-up: allocator, autotuning, first-call overheads
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {kind: [] for kind in steps}
    kinds = list(steps)
    for i in range(n):
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            sync()
            start = time.perf_counter()
            steps[kind]()
            sync()
            times[kind].append(time.perf_counter() - start)
    return {kind: batch / statistics.median(t) for kind, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", choices=["auto", "bf16", "none"], default="auto",
                        help="auto: what training would pick on this CPU (bf16 only where native)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu or cuda (data resident there, as in training)")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    configure_environment()  # the project's process settings (telemetry off, Ray's metrics collection off)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    train = load_split(fetch_dataset(DataConfig(data_dir=args.data_dir)), "train")
    images, labels = torch.from_numpy(train.images).to(dev), torch.from_numpy(train.labels).to(dev)
    mean, std = 0.286, 0.353
    policy = AugmentPolicy(crop_padding=2, hflip_prob=0.5, erasing_prob=0.0)  # erasing has no plain twin here
    mode, why = loop.resolve_precision(args.precision, dev)
    amp = mode == "bf16"
    precision = loop.Precision(device=dev, mode=mode, channels_last=True)

    def make_step(kind: str):
        """A fresh model, optimiser and generator, and one training step of `kind` over them."""
        torch.manual_seed(0)
        model = build_model("cnn", width=32).to(dev).to(memory_format=torch.channels_last).train()
        opt = loop.build_optimizer(model, 0.1, 0.9, 5e-4)
        gen = torch.Generator(device=dev).manual_seed(0)

        def step() -> None:
            i = torch.randint(0, len(labels), (args.batch,), generator=gen, device=dev)
            if kind == "plain":
                plain_step(model, opt, images, labels, i, gen, mean, std, amp)
            else:
                x = augment_batch(images[i], policy, gen, mean, std)
                loop.train_step(model, x, labels[i], opt, precision, label_smoothing=0.1)

        return step

    rates = measure_interleaved({"plain": make_step("plain"), "modelyard": make_step("modelyard")}, args.steps,
                                args.batch, sync)
    plain, ours = rates["plain"], rates["modelyard"]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {args.threads} threads"
    print(f"{where}: batch={args.batch} precision={mode} ({why}) steps={args.steps}")
    print(f"plain PyTorch : {plain:8.0f} samples/s")
    print(f"modelyard     : {ours:8.0f} samples/s")
    print(f"ratio modelyard/plain = {ours / plain:.3f}")


if __name__ == "__main__":
    main()
