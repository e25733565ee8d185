"""The Vision Transformer from scratch: images cut into patches that self-attention mixes, where only the
position embeddings tell the patches' places apart; and it learns real images."""

from __future__ import annotations

import pytest
import torch

from helpers.models import GRAY_28
from modelyard.models import build_model, family_config


def vit(**fields):
    family = family_config({"name": "vit", "dim": 32, "depth": 2, "heads": 4, **fields})
    torch.manual_seed(0)
    return build_model("vit", **family.builder_args({"in_channels": 1, "height": 28, "width": 28}, 10)).eval()


def test_patches_become_tokens_beside_a_class_token(test_sample):
    model = vit(patch_size=4)
    x = GRAY_28(torch.from_numpy(test_sample.images[:3]))
    tokens = model.patch_embed(x).flatten(2).transpose(1, 2)
    assert tokens.shape == (3, 49, 32) and model.pos_embed.shape == (1, 50, 32)  # 7x7 patches and [cls]
    assert model(x).shape == (3, 10)


def test_only_the_position_embeddings_tell_where_a_patch_was(test_sample):
    """Self-attention is blind to order: with the position embeddings zeroed, an image whose 7x7 patches are
    shuffled gives the same logits; with them, it does not."""
    model = vit(patch_size=4)
    x = GRAY_28(torch.from_numpy(test_sample.images[:2]))
    perm = torch.randperm(49, generator=torch.Generator().manual_seed(0))
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4).reshape(2, 1, 49, 4, 4)[:, :, perm]
    shuffled = patches.reshape(2, 1, 7, 7, 4, 4).permute(0, 1, 2, 4, 3, 5).reshape(2, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(shuffled), atol=1e-4)
        model.pos_embed.zero_()
        assert torch.allclose(model(x), model(shuffled), atol=1e-4)


@pytest.mark.parametrize(("fields", "needle"), [
    ({"patch_size": 5}, "patch_size=5 does not divide the 28x28 images"),
    ({"dim": 30, "heads": 4}, "dim=30 is not a multiple of model.heads=4"),
])
def test_impossible_shapes_are_refused_by_name(fields, needle):
    with pytest.raises(ValueError, match=needle):
        family_config({"name": "vit", **fields}).builder_args({"in_channels": 1, "height": 28, "width": 28}, 10)


@pytest.mark.slow
def test_it_learns_real_images(small_dataset_dir, tmp_path):
    from helpers.config import small_config
    from modelyard.data.prepare import prepare_splits
    from modelyard.training.local import train_local

    cfg = small_config(tmp_path, recipe="fashion-vit", train={"epochs": 3, "batch_size": 128})
    prepared = prepare_splits(small_dataset_dir, cfg.prepare, tmp_path / "prepared")
    _, _, history, _ = train_local(cfg, family_config(cfg.model), small_dataset_dir, prepared)
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert history[-1]["val/accuracy"] > 0.45  # 3 epochs (one of warm-up) on 3,600 real images; chance: 0.10
