"""The prepare stage: a seeded train/val split, statistics fitted on the training rows, and the policy.

All three are fitted once here, on the training rows only, and written to `<prepared_dir>/prepared.json`
(plus the split's row numbers). The statistics are the modality's (per-channel pixel or feature statistics;
nothing for text, whose tokenizer is the model's). The augmentation policy (the dataset's own, with what the
run changes in `prepare.augment`) is applied by training a batch at a time on the training device, because a
per-sample DataLoader is the bottleneck for datasets this small.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.config import PrepareConfig
from modelyard.data.dataset import DatasetError, load_split, modality_of, read_metadata, stratified_cut
from modelyard.data.datasets import get_dataset
from modelyard.modalities import Policy, get_modality

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What training needs besides the data: which rows are train/val, the fitted statistics, the policy."""

    dataset: str
    train_indices: np.ndarray
    val_indices: np.ndarray
    statistics: dict[str, Any]
    policy: Policy
    seed: int


class StaleSplitError(DatasetError):
    """The prepared split was cut from other data than the dataset now on disk."""


def prepare_splits(dataset_dir: str | os.PathLike[str], cfg: PrepareConfig, out_dir: str | os.PathLike[str]) -> Path:
    """Fit the split, statistics and policy on the training set only; the test split is not read."""
    meta = read_metadata(dataset_dir)
    modality, spec = modality_of(meta), get_dataset(meta["name"])
    try:
        policy = modality.policy(spec.augment, cfg.augment)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"prepare.augment: {exc}") from None
    train = load_split(dataset_dir, "train")
    train_idx, val_idx = stratified_split(train.labels, cfg.val_fraction, cfg.seed)
    statistics = modality.fit_statistics(train.take(train_idx))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "split.npz", train=train_idx, val=val_idx)
    doc = {
        "dataset": meta["name"],
        "modality": modality.name,
        "dataset_sha256": meta["splits"]["train"]["sha256"],
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "counts": {"train": int(len(train_idx)), "val": int(len(val_idx))},
        "statistics": statistics,
        "policy": asdict(policy),
    }
    (out / "prepared.json").write_text(json.dumps(doc, indent=2) + "\n")
    log.info("split %s: %d train / %d val; statistics %s; policy %s", meta["name"], len(train_idx), len(val_idx),
             _rounded(statistics), policy)
    return out


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return round(value, 4) if isinstance(value, float) else value


def check_prepared(prepared_dir: str | os.PathLike[str], dataset_dir: str | os.PathLike[str]) -> None:
    """Refuse a split that was not cut from the dataset now at `dataset_dir` (its indices would be wrong)."""
    path = Path(prepared_dir) / "prepared.json"
    if not path.is_file():
        raise StaleSplitError(f"no prepared split at {prepared_dir}: run `modelyard prepare` first")
    cut_from = json.loads(path.read_text()).get("dataset_sha256")
    now = read_metadata(dataset_dir)["splits"]["train"]["sha256"]
    if cut_from != now:
        raise StaleSplitError(
            f"the prepared split in {prepared_dir} was cut from dataset {str(cut_from)[:12]}…, but the data in "
            f"{dataset_dir} are now {now[:12]}…: re-run `modelyard prepare` (or `dvc repro`) before training")


def load_prepared(prepared_dir: str | os.PathLike[str]) -> Prepared:
    prepared_dir = Path(prepared_dir)
    doc = json.loads((prepared_dir / "prepared.json").read_text())
    with np.load(prepared_dir / "split.npz") as npz:
        train_idx, val_idx = npz["train"], npz["val"]
    return Prepared(dataset=doc["dataset"], train_indices=train_idx, val_indices=val_idx,
                    statistics=doc["statistics"], policy=get_modality(doc["modality"]).policy_from_dict(doc["policy"]),
                    seed=doc["seed"])


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class seeded shuffle, so train and val keep the class balance. Returns sorted index arrays."""
    train, val = stratified_cut(labels, val_fraction, np.random.default_rng(seed))
    return np.sort(train), np.sort(val)
