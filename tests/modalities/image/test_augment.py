"""modelyard.modalities.image.augment: crop, flip and erasing on real Fashion-MNIST batches, the policy that
switches them on, and the per-channel statistics the prepare stage fits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modelyard.data.datasets import get_dataset
from modelyard.modalities.image import ImagePolicy, ImagePreprocessor
from modelyard.modalities.image.augment import fit_normalization, random_crop, random_erasing, random_hflip

GRAY = ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.286,), (0.353,))
FASHION = ImagePolicy.from_dict(get_dataset("fashion_mnist").augment)  # crop 2, flip 0.5, erasing 0.25


@pytest.fixture
def batch(test_sample):
    return torch.from_numpy(test_sample.images[:64]).float().div(255).unsqueeze(1)  # (64, 1, 28, 28)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_crop_keeps_shape_and_only_shifts_content(batch):
    out = random_crop(batch, padding=2, gen=gen())
    assert out.shape == batch.shape
    # Each output is the input shifted by at most 2 px: some shift of the padded input matches exactly.
    padded = torch.nn.functional.pad(batch, (2, 2, 2, 2))
    for i in range(8):
        shifts = [padded[i, :, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], shifted) for shifted in shifts)
    assert not torch.equal(out, batch)  # some image did move


def test_crop_with_zero_padding_is_identity(batch):
    assert torch.equal(random_crop(batch, 0, gen()), batch)


def test_crop_shifts_each_channel_of_a_colour_image_together(batch):
    rgb = torch.cat([batch, batch * 0.5, 1 - batch], dim=1)  # (64, 3, 28, 28)
    out = random_crop(rgb, padding=3, gen=gen(4))
    padded = torch.nn.functional.pad(rgb, (3, 3, 3, 3))
    for i in range(4):
        shifts = [padded[i, :, dy:dy + 28, dx:dx + 28] for dy in range(7) for dx in range(7)]
        assert any(torch.equal(out[i], shifted) for shifted in shifts)


@pytest.mark.parametrize(("prob", "expect_flipped"), [(0.0, 0), (1.0, 64)])
def test_hflip_probability_extremes(batch, prob, expect_flipped):
    out = random_hflip(batch, prob, gen())
    flipped = sum(torch.equal(out[i], batch[i].flip(2)) and not torch.equal(batch[i], batch[i].flip(2))
                  for i in range(64))
    assert flipped == expect_flipped


def test_hflip_at_one_half_flips_about_half(test_sample):
    x = torch.from_numpy(test_sample.images).float().div(255).unsqueeze(1)  # 200 images
    out = random_hflip(x, 0.5, gen(3))
    flipped = sum(torch.equal(out[i], x[i].flip(2)) and not torch.equal(x[i], x[i].flip(2))
                  for i in range(200))
    assert 70 <= flipped <= 130  # binomial(200, 0.5): outside this is a broken probability, not chance


def test_erasing_zeroes_one_rectangle_within_the_scale_bounds(batch):
    x = torch.ones_like(batch)
    out = random_erasing(x, prob=1.0, scale=(0.05, 0.1), ratio=(0.5, 2.0), gen=gen())
    erased = (out == 0).squeeze(1)  # (B, H, W)
    area = erased.float().mean(dim=(1, 2))
    assert torch.all(area > 0.02) and torch.all(area < 0.16)
    for mask in erased[:8]:
        rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a solid rectangle


def test_erasing_at_probability_zero_changes_nothing(batch):
    assert torch.equal(random_erasing(batch, 0.0, (0.05, 0.1), (0.5, 2.0), gen()), batch)


def test_augmentation_is_reproducible_from_the_seed(test_sample):
    images = torch.from_numpy(test_sample.images[:32])
    a = GRAY.train_batch(images, FASHION, gen(7))
    b = GRAY.train_batch(images, FASHION, gen(7))
    c = GRAY.train_batch(images, FASHION, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (32, 1, 28, 28) and a.dtype == torch.float32


def test_the_identity_policy_trains_on_what_evaluation_sees(test_sample):
    images = torch.from_numpy(test_sample.images[:32])
    assert ImagePolicy().is_identity and not FASHION.is_identity
    assert torch.equal(GRAY.train_batch(images, ImagePolicy(), gen(1)), GRAY(images))
    assert not torch.equal(GRAY.train_batch(images, FASHION, gen(1)), GRAY(images))


def test_fit_normalization_on_real_images(test_sample):
    mean, std = fit_normalization(test_sample.images)
    assert len(mean) == len(std) == 1
    assert 0.2 < mean[0] < 0.4 and 0.3 < std[0] < 0.4  # Fashion-MNIST: mean ~0.286, std ~0.353
    exact = test_sample.images.astype(np.float64) / 255
    assert mean[0] == pytest.approx(exact.mean()) and std[0] == pytest.approx(exact.std())


def test_fit_normalization_in_chunks_is_the_same_as_at_once(test_sample):
    (chunked_mean, chunked_std), (mean, std) = fit_normalization(test_sample.images, chunk=7), \
        fit_normalization(test_sample.images)
    assert chunked_mean == pytest.approx(mean) and chunked_std == pytest.approx(std)


def test_fit_normalization_is_per_channel(test_sample):
    # Real images put in different channels at different brightness: each channel gets its own statistics.
    gray = test_sample.images[:100]
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)  # (N, 28, 28, 3)
    mean, std = fit_normalization(rgb)
    single, single_std = fit_normalization(gray)
    assert len(mean) == len(std) == 3 and mean[0] == pytest.approx(single[0])
    assert mean[1] == pytest.approx((gray // 2).astype(np.float64).mean() / 255)
    assert mean[2] == pytest.approx(1 - single[0], abs=1e-9)
    assert std[2] == pytest.approx(single_std[0])  # inverting does not change the spread


def test_the_policy_defaults_are_off_and_each_dataset_has_its_own():
    assert ImagePolicy() == ImagePolicy(crop_padding=0, hflip_prob=0.0, erasing_prob=0.0)
    assert FASHION == ImagePolicy(2, 0.5, 0.25)
    assert ImagePolicy.from_dict(get_dataset("cifar10").augment) == ImagePolicy(4, 0.5, 0.0)


def test_from_dict_reads_json_and_refuses_unknown_settings_naming_the_known_ones():
    policy = ImagePolicy(crop_padding=1, erasing_prob=0.5, erasing_scale=(0.1, 0.2))
    doc = json.loads(json.dumps(policy.__dict__))  # tuples come back as lists
    assert ImagePolicy.from_dict(doc) == policy
    with pytest.raises(ValueError) as exc:
        ImagePolicy.from_dict({"crop_padding": 2, "rotate_degrees": 10, "token_swap_prob": 0.1})
    assert str(exc.value) == ("rotate_degrees, token_swap_prob: not an image augmentation setting; the image "
                              "policy has crop_padding, erasing_prob, erasing_ratio, erasing_scale, "
                              "hflip_prob")


@pytest.mark.parametrize(("settings", "needle"), [
    ({"crop_padding": 17}, "crop_padding must be 0 to 16"),
    ({"crop_padding": -1}, "crop_padding must be 0 to 16"),
    ({"hflip_prob": 1.5}, "hflip_prob must be a probability"),
    ({"erasing_prob": -0.1}, "erasing_prob must be a probability"),
    ({"erasing_scale": [0.5, 0.1]}, "erasing_scale: expected 0 < low <= high"),
    ({"erasing_ratio": [0.0, 2.0]}, "erasing_ratio: expected 0 < low <= high"),
])
def test_out_of_range_settings_are_refused_with_the_setting_named(settings, needle):
    with pytest.raises(ValueError, match=needle):
        ImagePolicy.from_dict(settings)
