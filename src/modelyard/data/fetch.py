"""Fetch a dataset from the first of its sources that answers, into the on-disk format of `dataset.py`.

Which sources a dataset has, and how its raw files are read, is the dataset's own business
(`modelyard.data.datasets`); this module tries them in the configured order, keeps the raw files under
`<data_dir>/raw/<dataset>/` (so a second fetch downloads nothing), and cuts the configured limits.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from modelyard.config import DataConfig
from modelyard.data.dataset import contents_sha256, load_split, read_metadata, replace_dir, write_dataset
from modelyard.data.datasets import DatasetSpec, SourceContext, get_dataset
from modelyard.modalities import get_modality

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """No source could provide the dataset."""


def fetch_dataset(cfg: DataConfig, dataset_dir: Path, raw_dir: Path, *, local_dir: str | None = None,
                  timeout_s: float = 15.0) -> Path:
    """Make `dataset_dir` hold the dataset (with cfg's limits), from the raw copy in `raw_dir` (downloaded
    there first when missing); reuse what is already there."""
    spec = get_dataset(cfg.dataset)
    unknown = [s for s in cfg.sources or () if s not in spec.sources]
    if unknown:  # refused even when a raw copy is already here: the run asked for something that does not exist
        raise FetchError(f"{spec.name} has no source {', '.join(map(repr, unknown))}; its sources are "
                         f"{', '.join(spec.sources)}")
    source = f"{spec.name} (train_limit={cfg.train_limit}, test_limit={cfg.test_limit})"
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    # One fetch of a dataset at a time on this disk: runs side by side download once, never read a raw copy
    # being replaced, and never cut the same directory twice at once.
    with FileLock(raw_dir.parent / f".{spec.name}.lock"):
        if is_current(dataset_dir, cfg):
            log.info("dataset %s already at %s; nothing to fetch", source, dataset_dir)
            return dataset_dir
        ctx = SourceContext(timeout_s=timeout_s, local_dir=Path(local_dir).expanduser() if local_dir else None)
        origin, full = _ensure_raw(spec, raw_dir, list(cfg.sources or spec.sources), ctx)
        splits = {}
        for split, data in full.items():
            limit = cfg.train_limit if split == "train" else cfg.test_limit
            splits[split] = data if limit is None else data.take(slice(0, limit))
        extra = {}
        if cfg.feedback:
            splits["train"], extra["feedback"] = with_feedback(splits["train"], Path(cfg.feedback), spec)
        write_dataset(dataset_dir, splits, list(spec.classes), source=origin, name=spec.name, modality=spec.modality,
                      extra=extra)
        (dataset_dir / "limits.txt").write_text(_limits(cfg))
    log.info("wrote %s: %s", dataset_dir, {k: len(v) for k, v in splits.items()})
    return dataset_dir


def _limits(cfg: DataConfig) -> str:
    text = f"train_limit={cfg.train_limit}\ntest_limit={cfg.test_limit}\n"
    if cfg.feedback:  # which feedback, by its contents: a rebuilt set is a new cut
        text += f"feedback={_feedback_hash(Path(cfg.feedback))}\n"
    return text


def _feedback_hash(feedback_dir: Path) -> str:
    return contents_sha256(read_metadata(feedback_dir))


def with_feedback(train: Any, feedback_dir: Path, spec: DatasetSpec) -> tuple[Any, dict[str, Any]]:
    """The training split with the feedback set's `train` rows after its own, and what dataset.json records of
    them. The feedback set must be of this dataset's modality and classes."""
    meta = read_metadata(feedback_dir)
    if meta.get("modality") != spec.modality or list(meta.get("classes", [])) != list(spec.classes):
        raise FetchError(f"the feedback set at {feedback_dir} ({meta.get('name')}: {meta.get('modality')}, "
                         f"{len(meta.get('classes', []))} classes) does not fit {spec.name} ({spec.modality}, "
                         f"{len(spec.classes)} classes)")
    info = {"path": str(feedback_dir.resolve()), "name": meta.get("name"), "sha256": _feedback_hash(feedback_dir),
            "train_rows": 0, "holdout_rows": meta["splits"].get("holdout", {}).get("count", 0)}
    if "train" not in meta["splits"]:
        return train, info
    rows = load_split(feedback_dir, "train")
    kind = get_modality(spec.modality)
    merged = kind.make_split([*train.inputs, *rows.inputs], np.concatenate([train.labels, rows.labels]))
    log.info("%d feedback rows from %s join the %d training rows", len(rows), feedback_dir, len(train))
    return merged, info | {"train_rows": len(rows)}


def is_current(dataset_dir: Path, cfg: DataConfig) -> bool:
    """Whether `dataset_dir` holds `cfg.dataset` cut to `cfg`'s limits."""
    limits = dataset_dir / "limits.txt"
    if not limits.is_file() or not (dataset_dir / "dataset.json").is_file():
        return False
    try:
        if read_metadata(dataset_dir).get("name") != cfg.dataset:
            return False
    except Exception:  # a damaged copy is simply fetched again
        return False
    return limits.read_text() == _limits(cfg)


def _ensure_raw(spec: DatasetSpec, raw_dir: Path, sources: list[str], ctx: SourceContext) -> tuple[str, dict[str, Any]]:
    """Raw files of a complete copy in `raw_dir` (reused when there), read into full splits."""
    marker = raw_dir / "SOURCE"
    if marker.is_file() and (raw_dir / spec.raw_marker).exists():
        try:
            return marker.read_text().strip(), _read_checked(spec, raw_dir)
        except Exception as exc:  # truncated (EOFError from gzip, tarfile.ReadError), foreign or damaged
            log.warning("raw copy of %s in %s is unreadable (%s: %s); fetching again", spec.name, raw_dir,
                        type(exc).__name__, exc)
    errors = []
    for source in sources:
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-{source}-", dir=raw_dir.parent))
        try:
            origin = spec.sources[source](staging, ctx)
            splits = _read_checked(spec, staging)  # refuse a truncated or foreign copy before keeping it
            (staging / "SOURCE").write_text(origin + "\n")
            replace_dir(staging, raw_dir)
            log.info("fetched %s from %s", spec.name, origin)
            return origin, splits
        except Exception as exc:  # every source's failure is reported together below
            log.warning("source %s failed for %s: %s", source, spec.name, exc)
            errors.append(f"{source}: {exc}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    raise FetchError(f"could not fetch {spec.name} from any source ({', '.join(sources)}): " + "; ".join(errors))


def _read_checked(spec: DatasetSpec, raw_dir: Path) -> dict[str, Any]:
    splits = spec.read_raw(raw_dir)
    for split in ("train", "test"):
        if split not in splits:
            raise FetchError(f"{spec.name}: the raw copy has no {split} split")
    for split, expected in (spec.split_sizes or {}).items():
        if len(splits[split]) != expected:
            raise FetchError(f"{spec.name} {split}: expected {expected} rows, got {len(splits[split])}")
    return splits
