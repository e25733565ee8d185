"""Token-level augmentation of training batches on the device: pure functions of (batch, generator)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from modelyard.modalities._policy import policy_from


@dataclass(frozen=True)
class TextPolicy:
    """Drop or swap content tokens of training batches (special tokens and padding are never touched)."""

    token_delete_prob: float = 0.0
    token_swap_prob: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if not 0 <= getattr(self, f.name) < 1:
                raise ValueError(f"{f.name} must be in [0, 1), got {getattr(self, f.name)}")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TextPolicy:
        return policy_from(cls, doc, "text")

    @property
    def is_identity(self) -> bool:
        return self.token_delete_prob == 0 and self.token_swap_prob == 0


def token_delete(ids: torch.Tensor, lengths: torch.Tensor, prob: float, protected: torch.Tensor, pad_id: int,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop each content token with probability `prob` (special tokens and padding stay); left-compacted."""
    pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
    inside = pos < lengths[:, None]
    content = inside & ~torch.isin(ids, protected)
    drop = content & (torch.rand(ids.shape, generator=gen, device=ids.device) < prob)
    keep = inside & ~drop
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, in their order
    new_ids = torch.gather(ids, 1, order)
    new_lengths = keep.sum(1)
    new_ids = new_ids.masked_fill(pos >= new_lengths[:, None], pad_id)
    return new_ids, new_lengths


def token_swap(ids: torch.Tensor, lengths: torch.Tensor, prob: float, protected: torch.Tensor,
               gen: torch.Generator) -> torch.Tensor:
    """Swap neighbouring content tokens: each position starts a swap with probability `prob` (no overlaps)."""
    n = ids.shape[1]
    pos = torch.arange(n, device=ids.device)[None, :]
    content = (pos < lengths[:, None]) & ~torch.isin(ids, protected)
    pair = content[:, :-1] & content[:, 1:]
    start = pair & (torch.rand(pair.shape, generator=gen, device=ids.device) < prob)
    start[:, 1:] &= ~start[:, :-1]  # a token takes part in one swap at most
    src = pos.expand_as(ids).clone()
    src[:, :-1] += start.long()
    src[:, 1:] -= start.long()
    return torch.gather(ids, 1, src)
