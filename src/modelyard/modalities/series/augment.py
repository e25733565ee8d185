"""Series augmentation, a batch at a time on the training device, on normalised values: pure functions of
(batch, mask, generator), and the policy that says which run with what strength."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from modelyard.modalities._policy import policy_from


@dataclass(frozen=True)
class SeriesPolicy:
    """Jitter (Gaussian noise), scaling (one factor per series and channel) and time warp (the frames of a series
    moved along time by a piecewise-linear warp through one random knot, its length kept); zeros turn each off."""

    jitter_std: float = 0.0  # in units of the channel's standard deviation
    scale_std: float = 0.0  # factor ~ N(1, scale_std)
    warp_prob: float = 0.0  # share of series warped
    warp_max: float = 0.2  # how far the knot moves, as a share of its position

    def __post_init__(self) -> None:
        for name in ("jitter_std", "scale_std"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be from 0 to 1, got {getattr(self, name)}")
        if not 0 <= self.warp_prob <= 1:
            raise ValueError(f"warp_prob must be a probability, got {self.warp_prob}")
        if not 0 <= self.warp_max < 1:
            raise ValueError(f"warp_max must be in [0, 1), got {self.warp_max}")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SeriesPolicy:
        return policy_from(cls, doc, "series")

    @property
    def is_identity(self) -> bool:
        return self.jitter_std == 0 and self.scale_std == 0 and self.warp_prob == 0


def jitter(x: torch.Tensor, mask: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """Add N(0, std) to every real frame (padding stays zero). x: (B, T, C), mask: (B, T)."""
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * std
    return x + noise * mask[:, :, None]


def scale(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """Multiply each series' channel by its own factor ~ N(1, std)."""
    factors = 1 + torch.randn((x.shape[0], 1, x.shape[2]), generator=gen, device=x.device, dtype=x.dtype) * std
    return x * factors


def time_warp(x: torch.Tensor, lengths: torch.Tensor, prob: float, max_shift: float, gen: torch.Generator) -> torch.Tensor:
    """Warp time in the chosen series: a knot at u (a quarter to three quarters in) moves to u * (1 + d), d in
    [-max_shift, max_shift]; frames before it are read at t * u / u', after it linearly onto the rest, so the
    series keeps its length and its first and last frame. Values between frames are interpolated."""
    b, t, _ = x.shape
    dev = x.device
    length = lengths.to(dev).float().clamp(min=2)
    knot = (0.25 + 0.5 * torch.rand(b, generator=gen, device=dev)) * (length - 1)
    moved = (knot * (1 + (2 * torch.rand(b, generator=gen, device=dev) - 1) * max_shift)).clamp(min=1e-3)
    moved = torch.minimum(moved, length - 1 - 1e-3)
    chosen = torch.rand(b, generator=gen, device=dev) < prob
    pos = torch.arange(t, device=dev, dtype=torch.float32)[None, :].expand(b, t)  # (B, T) output positions
    before = pos * (knot / moved)[:, None]
    after = knot[:, None] + (pos - moved[:, None]) * ((length - 1 - knot) / (length - 1 - moved))[:, None]
    src = torch.where(pos < moved[:, None], before, after).clamp(min=0)
    src = torch.minimum(src, (length - 1)[:, None])
    src = torch.where(chosen[:, None], src, pos)  # the others are read as they are
    low = src.floor().long().clamp(max=t - 1)
    high = (low + 1).clamp(max=t - 1)
    w = (src - low.float())[:, :, None].to(x.dtype)
    gather = lambda idx: torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[2]))  # noqa: E731
    warped = gather(low) * (1 - w) + gather(high) * w
    inside = pos < length[:, None]
    return torch.where(inside[:, :, None], warped, x)
