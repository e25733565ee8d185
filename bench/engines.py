"""The two training engines on the same run: modelyard's own loop (`train.engine: torch`) against
`lightning.Trainer` stepping the same model, data, optimiser and precision (`train.engine: lightning`).

    python -m bench.engines [--recipe fashion-cnn] [--train-images 12000] [--epochs 3] [--rounds 2] [--workers auto]

Both go through `modelyard.training.distributed.train` on a local Ray (Ray Train, the planned workers), on the
same real Fashion-MNIST images from the same seed. The runs alternate (torch, lightning, torch, ...) because
the same loop's speed drifts by 10% on a shared machine; the ratio is of the medians of each engine's training
time per epoch after the first (the first pays for warm-up), from `history.json`'s `train/epoch_time_s`.
Also prints each run's Ray Train start-up (fit() to the first step) and its test accuracy on the untouched
test split: the engines step the same numbers, so the accuracies should agree to the last digit or nearly.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

from modelyard.config import load_config
from modelyard.data.dataset import load_split, read_metadata, write_dataset
from modelyard.data.fetch import fetch_dataset
from modelyard.data.prepare import prepare_splits
from modelyard.inference import Predictor
from modelyard.modalities.image import ImageSplit
from modelyard.models import family_config
from modelyard.paths import TaskPaths
from modelyard.runtime import configure_environment
from modelyard.training.precision import cpu_bf16_support

ENGINES = ("torch", "lightning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fashion-cnn")
    parser.add_argument("--train-images", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="auto", help="train.num_workers (auto: the planner's choice)")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    configure_environment()
    os.environ.pop("RAY_ADDRESS", None)  # a local Ray, like `dvc repro`
    from modelyard.training.distributed import train

    source = load_config("params.yaml", {"recipe": args.recipe, "paths": {"data_dir": args.data_dir}})
    stable = TaskPaths.of(source)
    full = fetch_dataset(source.data, stable.dataset_dir, stable.raw_dir, local_dir=source.paths.local_source_dir)
    workers = args.workers if args.workers == "auto" else int(args.workers)
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-engines-") as tmp:
        tmp = Path(tmp)
        base = load_config("params.yaml", {
            "recipe": args.recipe, "train": {"epochs": args.epochs, "num_workers": workers, "progress_every_s": 600},
            "paths": {"data_dir": str(tmp / "data"), "artifacts_dir": str(tmp)}})
        paths = TaskPaths.of(base)
        split = load_split(full, "train")
        test = load_split(full, "test")
        dataset_dir = write_dataset(paths.dataset_dir, {
            "train": ImageSplit(split.images[:args.train_images], split.labels[:args.train_images]), "test": test},
            read_metadata(full)["classes"], source="bench subset", name=read_metadata(full)["name"], modality="image")
        prepared_dir = prepare_splits(dataset_dir, base.prepare, paths.prepared_dir)
        epoch_s: dict[str, list[float]] = {e: [] for e in ENGINES}
        lines = []
        for round_ in range(args.rounds):
            for engine in ENGINES:
                cfg = base.with_overrides({"train": {"engine": engine}})
                result = train(cfg, family_config(cfg.model), dataset_dir, prepared_dir,
                               paths.task_dir / f"{engine}-{round_}")
                times = [h["train/epoch_time_s"] for h in result.history]
                epoch_s[engine] += times[1:]
                predictor = Predictor.from_dir(result.model_dir)
                accuracy = float((predictor.predict_proba(test.images).argmax(1) == test.labels).mean())
                lines.append((engine, result, times, accuracy))
    print(f"\nengines: {args.recipe} on {args.train_images} real training images, {args.epochs} epochs, "
          f"cpu={platform.processor() or platform.machine()} cores={os.cpu_count()} native_bf16={cpu_bf16_support()}")
    for engine, result, times, accuracy in lines:
        print(f"  {engine:9s} {result.num_workers} worker(s) x {result.cpus_per_worker} CPU(s), {result.precision}: "
              f"epochs {', '.join(f'{t:5.2f}' for t in times)} s; start-up {result.startup_s} s; "
              f"test accuracy {accuracy:.4f} on {len(test.labels)}")
    torch_s, lightning_s = statistics.median(epoch_s["torch"]), statistics.median(epoch_s["lightning"])
    print(f"median training time per epoch after the first: torch {torch_s:.2f} s, lightning {lightning_s:.2f} s; "
          f"epoch-time ratio lightning/torch = {lightning_s / torch_s:.3f}")


if __name__ == "__main__":
    main()
