"""End-to-end throughput of a Ray Train epoch at the default settings, against one plain PyTorch process.

    python -m bench.train_epoch [--train-images 12000] [--epochs 3] [--rounds 2] [--also-workers 2]

Both sides train the same CNN on the same real Fashion-MNIST images with the same batch size, precision
and augmentation, and validate on the same held-out images; each epoch is timed from its first step to its
validation result. The plain side is one process using every core of this machine (what a user would write
without Ray). modelyard's side is `modelyard.training.distributed.train` with params.yaml's defaults
(workers and threads planned from the cluster, precision chosen from the hardware), on a local Ray; its
epochs after the first are compared (the first pays for warm-up). On a shared machine the speed of the
very same loop drifts by 10% or more from one minute to the next, so the runs alternate (plain, modelyard,
plain, modelyard, plain) and the ratio is of the medians over all their epochs after the first. Prints
samples/s for each epoch and the ratio; target >= 0.9. `--also-workers N` adds runs with N explicit
workers, to show what the default saves. Also prints Ray Train's fixed cost per run: seconds from
`trainer.fit()` to the end of the first optimiser step (workers started, process group, data and weights
from the object store, model built), as `train.json`'s `startup_s` records it; goal <= 10 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from modelyard.config import load_config
from modelyard.data.dataset import load_split, read_metadata, write_dataset
from modelyard.data.fetch import fetch_dataset
from modelyard.data.prepare import prepare_splits
from modelyard.modalities.image import ImagePreprocessor, ImageSplit
from modelyard.models import family_config
from modelyard.paths import TaskPaths
from modelyard.runtime import configure_environment
from modelyard.training.precision import cpu_bf16_support, resolve_precision


def plain_epochs(dataset_dir: Path, prepared_dir: Path, cfg, epochs: int) -> list[float]:
    """The same epoch written as a single plain PyTorch process: samples/s per epoch (train + validation)."""
    from modelyard.data.prepare import load_prepared
    from modelyard.models import build_model

    torch.set_num_threads(os.cpu_count() or 1)
    prepared = load_prepared(prepared_dir)
    split = load_split(dataset_dir, "train")
    images, labels = torch.from_numpy(split.images), torch.from_numpy(split.labels)
    train_idx, val_idx = torch.from_numpy(prepared.train_indices), torch.from_numpy(prepared.val_indices)
    mode, _ = resolve_precision(cfg.train.mixed_precision, torch.device("cpu"))
    torch.manual_seed(cfg.train.seed)
    family = family_config(cfg.model)
    model = build_model("cnn", in_channels=1, num_classes=10, width=family.width, dropout=family.dropout)
    stats = prepared.statistics
    pre = ImagePreprocessor((28, 28, 1), (28, 28, 1), tuple(stats["mean"]), tuple(stats["std"]))
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.learning_rate, momentum=cfg.train.momentum, nesterov=True,
                          weight_decay=cfg.train.weight_decay)
    policy = prepared.policy
    gen = torch.Generator().manual_seed(0)
    bs = cfg.train.batch_size
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for i in range(0, len(order) - len(order) % bs, bs):
            idx = order[i:i + bs]
            x = pre.train_batch(images[idx], policy, gen)
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss = F.cross_entropy(model(x), labels[idx], label_smoothing=cfg.train.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            for i in range(0, len(val_idx), 1000):
                model(pre(images[val_idx[i:i + 1000]])).argmax(1)
        rates.append((len(order) - len(order) % bs) / (time.perf_counter() - start))
    return rates


def modelyard_epochs(dataset_dir: Path, prepared_dir: Path, cfg, out_dir: Path) -> tuple[list[float], object]:
    from modelyard.training.distributed import train

    result = train(cfg, family_config(cfg.model), dataset_dir, prepared_dir, out_dir)
    steps = [(h["train/samples_per_s"] * h["train/epoch_time_s"], h["epoch/wall_time_s"]) for h in result.history]
    return [samples / wall for samples, wall in steps], result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="plain/modelyard alternations")
    parser.add_argument("--also-workers", type=int, default=0, help="also time N explicit workers (0: skip)")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    configure_environment()  # the project's process settings (telemetry off, Ray's metrics collection off)
    os.environ.pop("RAY_ADDRESS", None)  # a local Ray, like `dvc repro`

    source = load_config("params.yaml", {"recipe": "fashion-cnn", "paths": {"data_dir": args.data_dir}})
    stable = TaskPaths.of(source)
    full = fetch_dataset(source.data, stable.dataset_dir, stable.raw_dir,
                         local_dir=source.paths.local_source_dir)
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        tmp = Path(tmp)
        cfg = load_config("params.yaml", {
            "recipe": "fashion-cnn", "train": {"epochs": args.epochs},
            "paths": {"data_dir": str(tmp / "data"), "artifacts_dir": str(tmp)}})
        paths = TaskPaths.of(cfg)
        train = load_split(full, "train")
        dataset_dir = write_dataset(paths.dataset_dir, {
            "train": ImageSplit(train.images[:args.train_images], train.labels[:args.train_images]),
            "test": load_split(full, "test")}, read_metadata(full)["classes"], source="bench subset",
            name="fashion_mnist", modality="image")
        prepared_dir = prepare_splits(dataset_dir, cfg.prepare, paths.prepared_dir)
        out = paths.task_dir  # each training's output directory; Ray's checkpoints beside them

        plain_rates, ours_rates, explicit_rates, startups, breakdowns = [], [], [], [], []
        explicit = cfg.with_overrides({"train": {"num_workers": args.also_workers or 1}})
        lines = []
        for round_ in range(args.rounds):
            rates = plain_epochs(dataset_dir, prepared_dir, cfg, args.epochs)
            plain_rates += rates[1:]
            lines.append(("plain PyTorch, 1 process", rates))
            rates, result = modelyard_epochs(dataset_dir, prepared_dir, cfg, out / f"train-{round_}")
            ours_rates += rates[1:]
            startups.append(result.startup_s)
            breakdowns.append(result.startup_breakdown_s)
            lines.append((f"modelyard: {result.num_workers} worker(s) x {result.cpus_per_worker} CPU(s)", rates))
            if args.also_workers:
                rates, res = modelyard_epochs(dataset_dir, prepared_dir, explicit, out / f"explicit-{round_}")
                explicit_rates += rates[1:]
                startups.append(res.startup_s)
                breakdowns.append(res.startup_breakdown_s)
                lines.append((f"modelyard: {res.num_workers} worker(s) x {res.cpus_per_worker} CPU(s), explicit", rates))
        rates = plain_epochs(dataset_dir, prepared_dir, cfg, args.epochs)
        plain_rates += rates[1:]
        lines.append(("plain PyTorch, 1 process", rates))
        print(f"cpu={platform.processor() or platform.machine()} cores={os.cpu_count()} "
              f"native_bf16={cpu_bf16_support()} precision={result.precision} images={args.train_images} "
              f"epochs={args.epochs} batch={cfg.train.batch_size}; samples/s per epoch (train + validation):")
        for name, rates in lines:
            print(f"  {name:<52} {', '.join(f'{r:5.0f}' for r in rates)}")
        plain = statistics.median(plain_rates)
        print(f"median after warm-up: plain {plain:.0f}, modelyard {statistics.median(ours_rates):.0f} samples/s")
        if explicit_rates:
            print(f"ratio with {args.also_workers} explicit workers = {statistics.median(explicit_rates) / plain:.3f}")
        print(f"ratio modelyard/plain (default settings) = {statistics.median(ours_rates) / plain:.3f}")
        print(f"Ray Train's fixed cost, trainer.fit() to the end of the first step: "
              f"{', '.join(f'{s:.1f}' for s in startups)} s (median {statistics.median(startups):.1f} s; goal <= 10 s)")
        for parts in breakdowns:
            print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))

if __name__ == "__main__":
    main()
