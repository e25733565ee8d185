"""Batch inference throughput: `modelyard predict-batch` (Ray Data, an actor pool over the registered
champion) against a plain PyTorch loop over the same image files.

    python -m bench.batch_predict [--images 4000] [--workers 1 2] [--data-dir data]

Both sides classify the same PNG files (real Fashion-MNIST test images, written to a folder) with the same
model: the default recipe's CNN, registered with its ONNX export in a throwaway MLflow store (weights as
initialised: the arithmetic, not the accuracy, is what is timed). The plain side is what a user would write
without the pipeline: list the folder, decode each file with PIL, stack batches of 64, run the model under
`torch.inference_mode()` with every core, collect the labels. modelyard's side is `predict_batch`, each
worker count in turn: it reads the files with Ray Data, decodes and checks every one with the image codec
the HTTP endpoint uses, runs the ONNX export (the parity-checked default backend), and writes Parquet with a
row per file. Its time includes loading the model in each actor and writing the output; Ray's own start
(once, before) is not counted. Prints images/s for each and the ratio; goal >= 1.0 on this machine.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from modelyard.artifact import ModelSpec, load_model_dir, save_model_dir
from modelyard.config import load_config
from modelyard.data.dataset import load_split, read_metadata
from modelyard.data.fetch import fetch_dataset
from modelyard.inference.onnx_export import export_and_check
from modelyard.models import family_config
from modelyard.paths import TaskPaths
from modelyard.runtime import configure_environment, connect_ray

TASK = "bench-fashion-cnn"


def write_pngs(images: np.ndarray, folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True)
    paths = []
    for i, image in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        paths.append(folder / f"{i:05d}.png")
        paths[-1].write_bytes(buf.getvalue())
    return paths


def register_cnn(tmp: Path, full: Path, uri: str) -> Path:
    from modelyard.data.datasets import get_dataset
    from modelyard.modalities import get_modality
    from modelyard.registry import tracking, versions

    cfg = load_config("params.yaml", {"recipe": "fashion-cnn"})
    family = family_config(cfg.model)
    test = load_split(full, "test")
    classes = read_metadata(full)["classes"]
    pre = get_modality("image").fit_preprocessor(family.preprocessing(), {"mean": [0.286], "std": [0.353]},
                                                 get_dataset("fashion_mnist").schema)
    spec = ModelSpec(family=family.name, args=family.builder_args(pre.model_input(), len(classes)), labels=classes,
                     preprocessing=pre.to_dict())
    torch.manual_seed(0)
    model_dir = save_model_dir(spec.build().eval(), spec, tmp / "model")
    assert export_and_check(model_dir, test.images[:128])["status"] == "ok"
    run_id = tracking.start_run(uri, "bench", params={})
    version = versions.log_model(uri, run_id, model_dir, TASK, input_example=test.images[:2],
                                 pip_requirements=["torch"])
    versions.set_alias(uri, TASK, "champion", version)
    tracking.end_run(uri, run_id)
    return model_dir


def plain_loop(model_dir: Path, files: list[Path], batch_size: int = 64) -> float:
    """The loop a user writes: PIL decode, normalise, batches, forward pass. Returns images/s."""
    from PIL import Image

    torch.set_num_threads(os.cpu_count() or 1)
    model, spec = load_model_dir(model_dir, "cpu")
    model.eval()
    pre = spec.preprocessor()
    mean, std = torch.tensor(pre.mean).view(1, -1, 1, 1), torch.tensor(pre.std).view(1, -1, 1, 1)
    start, labels = time.perf_counter(), []
    with torch.inference_mode():
        for at in range(0, len(files), batch_size):
            batch = [np.asarray(Image.open(f).convert("L"), dtype=np.uint8) for f in files[at:at + batch_size]]
            x = torch.from_numpy(np.stack(batch)).unsqueeze(1).float().div(255)
            labels += model((x - mean) / std).argmax(1).tolist()
    seconds = time.perf_counter() - start
    assert len(labels) == len(files)
    return len(files) / seconds


def main() -> None:
    from modelyard.inference.batch import predict_batch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    configure_environment()
    os.environ.pop("RAY_ADDRESS", None)
    source = load_config("params.yaml", {"recipe": "fashion-cnn", "paths": {"data_dir": args.data_dir}})
    stable = TaskPaths.of(source)
    full = fetch_dataset(source.data, stable.dataset_dir, stable.raw_dir, local_dir=source.paths.local_source_dir)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.images} PNGs of the "
          f"Fashion-MNIST test split; the default recipe's CNN")
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        files = write_pngs(load_split(full, "test").images[:args.images], tmp / "photos")
        model_dir = register_cnn(tmp, full, uri)
        plain = plain_loop(model_dir, files)
        print(f"plain PyTorch loop: {plain:.0f} images/s")
        connect_ray(None)
        for workers in args.workers:
            summary = predict_batch(uri, TASK, tmp / "photos", tmp / f"out-{workers}", workers=workers)
            assert summary.rows == len(files) and summary.errors == 0
            print(f"predict-batch, {workers} actor(s), {summary.backend}: {summary.rows_per_s:.0f} images/s "
                  f"({summary.seconds:.1f} s, model loading and Parquet writing included): "
                  f"{summary.rows_per_s / plain:.2f}x the plain loop")


if __name__ == "__main__":
    main()
