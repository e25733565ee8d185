"""The augment stage: a seeded train/val split, per-channel normalisation statistics, and the policy.

The split and statistics are fitted once here, on the training rows only, and written to
`<prepared_dir>/<dataset>/prepared.json` (plus the split indices). The policy (the dataset's own, unless
the run overrides it) is applied on the fly, a batch at a time, on the training device by the model's
preprocessor (`modelyard.data.preprocess`), because a per-sample DataLoader is the bottleneck for datasets
this small.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modelyard.config import AugmentConfig
from modelyard.data.dataset import DatasetError, load_split, read_metadata
from modelyard.data.datasets import get_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentPolicy:
    crop_padding: int = 2
    hflip_prob: float = 0.5
    erasing_prob: float = 0.25
    erasing_scale: tuple[float, float] = (0.02, 0.15)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)

    @classmethod
    def from_config(cls, cfg: AugmentConfig, dataset: str) -> AugmentPolicy:
        """The run's policy: each setting left null comes from the dataset's own defaults."""
        defaults = get_dataset(dataset).augment
        pick = {k: getattr(cfg, k) if getattr(cfg, k) is not None else defaults.get(k, getattr(cls, k))
                for k in ("crop_padding", "hflip_prob", "erasing_prob")}
        return cls(**pick, erasing_scale=tuple(cfg.erasing_scale), erasing_ratio=tuple(cfg.erasing_ratio))

    @property
    def is_identity(self) -> bool:
        """Nothing is augmented: a frozen backbone's features can then be computed once."""
        return self.crop_padding == 0 and self.hflip_prob == 0 and self.erasing_prob == 0


@dataclass(frozen=True)
class TextAugmentPolicy:
    """Token-level augmentation of training batches (special tokens are never touched)."""

    token_delete_prob: float = 0.0
    token_swap_prob: float = 0.0

    @classmethod
    def from_config(cls, cfg: AugmentConfig, dataset: str) -> TextAugmentPolicy:
        defaults = get_dataset(dataset).augment
        return cls(**{k: getattr(cfg, k) if getattr(cfg, k) is not None else defaults.get(k, getattr(cls, k))
                      for k in ("token_delete_prob", "token_swap_prob")})

    @property
    def is_identity(self) -> bool:
        return self.token_delete_prob == 0 and self.token_swap_prob == 0


def policy_from_dict(doc: dict) -> AugmentPolicy | TextAugmentPolicy:
    if "token_delete_prob" in doc:
        return TextAugmentPolicy(**doc)
    return AugmentPolicy(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()})


@dataclass(frozen=True)
class Prepared:
    """What training needs besides the data: which rows are train/val, and how to normalise (images)."""

    dataset: str
    train_indices: np.ndarray
    val_indices: np.ndarray
    mean: list[float]  # per channel, of pixels in [0, 1]; empty for text
    std: list[float]
    policy: AugmentPolicy | TextAugmentPolicy
    seed: int


def prepare_splits(dataset_dir: str | os.PathLike[str], cfg: AugmentConfig) -> Path:
    """Fit the split and statistics on the training set only; the test split is not read."""
    dataset_dir = Path(dataset_dir)
    meta = read_metadata(dataset_dir)
    train = load_split(dataset_dir, "train")
    train_idx, val_idx = stratified_split(train.labels, cfg.val_fraction, cfg.seed)
    if meta.get("modality") == "text":
        mean, std = [], []
        policy: AugmentPolicy | TextAugmentPolicy = TextAugmentPolicy.from_config(cfg, meta["name"])
    else:
        mean, std = fit_normalization(train.images[train_idx])
        policy = AugmentPolicy.from_config(cfg, meta["name"])
    out_dir = Path(cfg.prepared_dir) / meta["name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "split.npz", train=train_idx, val=val_idx)
    doc = {
        "dataset": meta["name"],
        "dataset_sha256": meta["splits"]["train"]["sha256"],
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "counts": {"train": int(len(train_idx)), "val": int(len(val_idx))},
        "normalization": {"mean": mean, "std": std},
        "policy": asdict(policy),
    }
    (out_dir / "prepared.json").write_text(json.dumps(doc, indent=2) + "\n")
    log.info("split %s: %d train / %d val; mean=%s std=%s; policy %s", meta["name"], len(train_idx), len(val_idx),
             [round(m, 4) for m in mean], [round(s, 4) for s in std], policy)
    return out_dir


class StaleSplitError(DatasetError):
    """The prepared split was cut from other data than the dataset now on disk."""


def check_prepared(prepared_dir: str | os.PathLike[str], dataset_dir: str | os.PathLike[str]) -> None:
    """Refuse a split that was not cut from the dataset now at `dataset_dir` (its indices would be wrong)."""
    path = Path(prepared_dir) / "prepared.json"
    if not path.is_file():
        raise StaleSplitError(f"no prepared split at {prepared_dir}: run `modelyard augment` first")
    cut_from = json.loads(path.read_text()).get("dataset_sha256")
    now = read_metadata(dataset_dir)["splits"]["train"]["sha256"]
    if cut_from != now:
        raise StaleSplitError(
            f"the prepared split in {prepared_dir} was cut from dataset {str(cut_from)[:12]}…, but the data in "
            f"{dataset_dir} are now {now[:12]}…: re-run `modelyard augment` (or `dvc repro`) before training"
        )


def load_prepared(prepared_dir: str | os.PathLike[str]) -> Prepared:
    prepared_dir = Path(prepared_dir)
    doc = json.loads((prepared_dir / "prepared.json").read_text())
    with np.load(prepared_dir / "split.npz") as npz:
        train_idx, val_idx = npz["train"], npz["val"]
    return Prepared(
        dataset=doc["dataset"],
        train_indices=train_idx,
        val_indices=val_idx,
        mean=_per_channel(doc["normalization"]["mean"]),
        std=_per_channel(doc["normalization"]["std"]),
        policy=policy_from_dict(doc["policy"]),
        seed=doc["seed"],
    )


def _per_channel(value: float | list[float]) -> list[float]:
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class seeded shuffle, so train and val keep the class balance. Returns sorted index arrays."""
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


def fit_normalization(images: np.ndarray, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Mean and std per channel of pixels scaled to [0, 1] (uint8 (N, H, W) gray or (N, H, W, C))."""
    c = 1 if images.ndim == 3 else int(images.shape[-1])
    total, total_sq, count = np.zeros(c), np.zeros(c), 0
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].reshape(-1, c).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += x.shape[0]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 0.0))
    return [float(m) for m in mean], [float(s) for s in std]


# ---- batch augmentation on the training device: pure functions of (batch, generator) -----------------

def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` and crop back to the input size at a random offset per image. x: (B, C, H, W)."""
    if padding == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def random_hflip(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < prob
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_erasing(
    x: torch.Tensor, prob: float, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator
) -> torch.Tensor:
    """Zero one random rectangle per chosen image (area fraction in `scale`, aspect ratio in `ratio`)."""
    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(scale[0], scale[1], generator=gen) * h * w
    log_r = torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = torch.exp(log_r)
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (torch.rand(b, generator=gen, device=dev) * (h - eh + 1)).long()
    left = (torch.rand(b, generator=gen, device=dev) * (w - ew + 1)).long()
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < (top + eh)[:, None])  # (B, H)
    in_cols = (xs >= left[:, None]) & (xs < (left + ew)[:, None])  # (B, W)
    chosen = torch.rand(b, generator=gen, device=dev) < prob
    mask = in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]  # (B, H, W)
    return x.masked_fill(mask[:, None], 0.0)
