"""A Vision Transformer trained from scratch (Dosovitskiy et al. 2021), sized for small images: the image is
cut into patches, each embedded linearly; a class token and learnt position embeddings are added; pre-norm
Transformer blocks (multi-head self-attention, then an MLP) mix the patches; the class token's final state
goes to a linear head.

    (B, C, H, W) --patches--> (B, N, D) --[cls] + positions--> (B, N+1, D) --blocks--> cls (B, D) --> logits
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from modelyard.models import FamilyConfig


class ViTConfig(FamilyConfig):
    """Patch embedding and self-attention blocks over the patches, trained from scratch."""

    name: Literal["vit"] = "vit"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    patch_size: int = Field(4, ge=1, le=32, description="Side of a square patch in pixels; it must divide the "
                                                         "image's height and width.")
    dim: int = Field(128, ge=16, le=2048, description="Width of a patch's embedding (a multiple of heads).")
    depth: int = Field(6, ge=1, le=24, description="Transformer blocks.")
    heads: int = Field(4, ge=1, le=32, description="Attention heads per block.")
    mlp_ratio: float = Field(2.0, gt=0, le=8, description="Hidden width of each block's MLP, in multiples of dim.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout in the MLPs and on the attention output.")

    def builder_args(self, model_input: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
        height, width = model_input["height"], model_input["width"]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"model.patch_size={self.patch_size} does not divide the {height}x{width} images")
        if self.dim % self.heads:
            raise ValueError(f"model.dim={self.dim} is not a multiple of model.heads={self.heads}")
        return {"in_channels": model_input["in_channels"], "image_size": [height, width], "num_classes": num_classes,
                "patch_size": self.patch_size, "dim": self.dim, "depth": self.depth, "heads": self.heads,
                "mlp_ratio": self.mlp_ratio, "dropout": self.dropout}


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D)
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d/h)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d/h)
        return self.dropout(self.out(y.transpose(1, 2).reshape(b, n, d)))


class Block(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, in_channels: int, image_size: list[int], num_classes: int, patch_size: int, dim: int,
                 depth: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        patches = (image_size[0] // patch_size) * (image_size[1] // patch_size)
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed  # (B, N+1, D)
        return self.head(self.norm(self.blocks(x))[:, 0])


def _init(module: nn.Module) -> None:
    """Truncated-normal linear weights and zero biases, as the ViT paper trains from scratch."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build(in_channels: int, image_size: list[int], num_classes: int, patch_size: int, dim: int, depth: int,
          heads: int, mlp_ratio: float, dropout: float) -> ViT:
    return ViT(in_channels, image_size, num_classes, patch_size, dim, depth, heads, mlp_ratio, dropout)


# What `modelyard tune` varies by default (modelyard.tuning.space).
SEARCH_SPACE = {
    "train.learning_rate": {"loguniform": [2e-4, 3e-3]},
    "train.weight_decay": {"loguniform": [1e-3, 0.1]},
    "train.batch_size": {"choice": [64, 128, 256]},
    "train.warmup_epochs": {"uniform": [0.0, 2.0]},
    "model.depth": {"int": [4, 8]},
    "model.mlp_ratio": {"choice": [2.0, 3.0, 4.0]},
    "model.dropout": {"uniform": [0.0, 0.3]},
    "prepare.augment.crop_padding": {"choice": [0, 1, 2]},
}

Config = ViTConfig
