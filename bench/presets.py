"""A recipe's training time and test accuracy on one device, through the pipeline's own worker code
(`modelyard.training.local`: the Ray Train worker without Ray), on the full dataset.

    python -m bench.presets --recipe fashion-gpu --device cuda [-S model.width=96] [--data-dir data]

Prints one line per run: recipe, overrides, device, precision, epochs, training seconds (first step to the
last epoch's validation, Ray's start-up excluded), samples/s and test accuracy on the untouched test split.
What the README's recipe table reports for GPUs comes from here; CPU figures come from `modelyard pipeline`.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import yaml

from modelyard.config import load_config
from modelyard.data.dataset import load_split
from modelyard.data.fetch import fetch_dataset
from modelyard.data.prepare import prepare_splits
from modelyard.inference import Predictor
from modelyard.models import family_config
from modelyard.paths import TaskPaths
from modelyard.runtime import configure_environment
from modelyard.training.local import train_local
from modelyard.training.precision import resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    configure_environment()
    overrides: dict = {"recipe": args.recipe}
    for item in args.overrides:
        key, _, raw = item.partition("=")
        section, _, name = key.partition(".")
        overrides.setdefault(section, {})[name] = yaml.safe_load(raw)
    with tempfile.TemporaryDirectory(prefix="modelyard-preset-") as tmp:
        cfg = load_config("params.yaml", overrides)
        # the dataset under --data-dir (raw downloads in <data-dir>/raw unless -S paths.raw_dir=...), the
        # prepared split in the temporary directory
        cfg = cfg.with_overrides({"paths": {"data_dir": args.data_dir, "artifacts_dir": tmp},
                                  "train": {"use_gpu": "auto"}})
        paths = TaskPaths.of(cfg)
        dataset_dir = fetch_dataset(cfg.data, paths.dataset_dir, paths.raw_dir,
                                    local_dir=cfg.paths.local_source_dir)
        prepared = prepare_splits(dataset_dir, cfg.prepare, paths.prepared_dir)
        model, spec, history, seconds = train_local(cfg, family_config(cfg.model), dataset_dir, prepared,
                                                    device=args.device)
        test = load_split(dataset_dir, "test")
        predictor = Predictor(model, spec, args.device)
        accuracy = float((predictor.predict_proba(test.inputs).argmax(1) == test.labels).mean())
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    mode, _ = resolve_precision(cfg.train.mixed_precision, device)
    train_s = sum(h["epoch/wall_time_s"] for h in history)
    samples = sum(h["train/samples_per_s"] * h["train/epoch_time_s"] for h in history)
    print(f"{args.recipe} {' '.join(args.overrides)} | {where} | precision {mode} | {len(history)} epochs | "
          f"training {train_s:.1f} s (with caching/compile {seconds:.1f} s) | {samples / max(train_s, 1e-9):,.0f} "
          f"samples/s | val {history[-1]['val/accuracy']:.4f} | test accuracy {accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
