"""Image augmentation, a batch at a time on the training device: pure functions of (batch, generator), and
the policy that says which run with what strength. Also the statistics the prepare stage fits."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from modelyard.modalities._policy import policy_from


@dataclass(frozen=True)
class ImagePolicy:
    """Random crop (zero padding), horizontal flip and random erasing; the zeros turn each one off."""

    crop_padding: int = 0
    hflip_prob: float = 0.0
    erasing_prob: float = 0.0
    erasing_scale: tuple[float, float] = (0.02, 0.15)  # area fraction of the erased rectangle
    erasing_ratio: tuple[float, float] = (0.3, 3.3)  # its aspect ratio

    def __post_init__(self) -> None:
        if not 0 <= self.crop_padding <= 16:
            raise ValueError(f"crop_padding must be 0 to 16 pixels, got {self.crop_padding}")
        for name in ("hflip_prob", "erasing_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        for name in ("erasing_scale", "erasing_ratio"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name}: expected 0 < low <= high, got {[low, high]}")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ImagePolicy:
        return policy_from(cls, doc, "image")

    @property
    def is_identity(self) -> bool:
        return self.crop_padding == 0 and self.hflip_prob == 0 and self.erasing_prob == 0


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
