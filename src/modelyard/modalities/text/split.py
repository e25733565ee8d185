"""Text splits: a list of strings and their labels, stored as JSON lines (`{"text": ..., "label": ...}`)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.modalities import array_sha256

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


class SplitFileError(RuntimeError):
    """A split file that is not in the text format."""


@dataclass(frozen=True)
class TextSchema:
    """Bounds of a text dataset: one text's length in characters, a split's mean length in words."""

    chars: tuple[int, int] = (1, 100_000)
    mean_words: tuple[float, float] = (1.0, 10_000.0)


@dataclass(frozen=True)
class TextSplit:
    texts: list[str]
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, rows: Any) -> TextSplit:
        if isinstance(rows, slice):
            return TextSplit(texts=self.texts[rows], labels=self.labels[rows])
        rows = np.asarray(rows)
        return TextSplit(texts=[self.texts[i] for i in rows], labels=self.labels[rows])

    @property
    def inputs(self) -> list[str]:
        return self.texts


def near_duplicate_key(text: str) -> str:
    """Two texts with the same key differ only in case, punctuation and spacing."""
    return _NOT_WORD.sub(" ", text.casefold()).strip()


def text_sha256(texts: list[str], labels: np.ndarray) -> str:
    """Content hash of texts and labels (each text length-prefixed, so no two lists hash alike). A value that
    is not a string (a broken export's number or null) is hashed as its JSON behind a 0xff byte, which no
    UTF-8 holds, so the split can still be written, validated and refused."""
    digest = hashlib.sha256()
    for text in texts:
        data = (text.encode("utf-8", errors="surrogatepass") if isinstance(text, str)
                else b"\xff" + json.dumps(text).encode())
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    digest.update(array_sha256(np.asarray(labels, dtype=np.int64)).encode())
    return digest.hexdigest()


def write_jsonl(path: Path, split: TextSplit) -> dict[str, Any]:
    if len(split.texts) != len(split.labels):  # one JSON line holds a text and its label: no way to keep this
        raise SplitFileError(f"cannot write {path.name}: {len(split.texts)} texts but {len(split.labels)} labels")
    with path.open("w", encoding="utf-8", errors="surrogatepass") as fh:
        for text, label in zip(split.texts, split.labels.tolist()):
            fh.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    return {}


def read_jsonl(path: Path) -> TextSplit:
    """Rows as they are: a text that is not a string, or a label that is not an integer, is kept as found
    (for validation to report); only a line that is not a JSON object stops the loader, naming the line."""
    texts, labels = [], []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                row = json.loads(raw)
            except ValueError as exc:  # includes invalid UTF-8
                raise SplitFileError(f"{path}:{number} is not a JSON line: {exc}") from exc
            if not isinstance(row, dict):
                raise SplitFileError(f"{path}:{number}: expected an object with 'text' and 'label'")
            texts.append(row.get("text"))
            labels.append(row.get("label", -1))
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        label_array = np.array([v if isinstance(v, int) else -1 for v in labels], dtype=np.int64)
    return TextSplit(texts=texts, labels=label_array)
