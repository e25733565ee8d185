import numpy as np
import pytest
import torch

from modelyard.data.augment import (
    AugmentPolicy,
    fit_normalization,
    random_crop,
    random_erasing,
    random_hflip,
    stratified_split,
)
from modelyard.data.preprocess import ImagePreprocessor

GRAY = ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.286,), (0.353,))


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
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 28, dx:dx + 28]) for dy in range(5) for dx in range(5))


def test_crop_with_zero_padding_is_identity(batch):
    assert torch.equal(random_crop(batch, 0, gen()), batch)


@pytest.mark.parametrize(("prob", "expect_flipped"), [(0.0, 0), (1.0, 64)])
def test_hflip_probability_extremes(batch, prob, expect_flipped):
    out = random_hflip(batch, prob, gen())
    flipped = sum(torch.equal(out[i], batch[i].flip(2)) and not torch.equal(batch[i], batch[i].flip(2)) for i in range(64))
    assert flipped == expect_flipped


def test_erasing_zeroes_one_rectangle_within_the_scale_bounds(batch):
    x = torch.ones_like(batch)
    out = random_erasing(x, prob=1.0, scale=(0.05, 0.1), ratio=(0.5, 2.0), gen=gen())
    erased = (out == 0).squeeze(1)  # (B, H, W)
    area = erased.float().mean(dim=(1, 2))
    assert torch.all(area > 0.02) and torch.all(area < 0.16)
    for mask in erased[:8]:
        rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a solid rectangle


def test_augmentation_is_reproducible_from_the_seed(test_sample):
    images = torch.from_numpy(test_sample.images[:32])
    policy = AugmentPolicy()
    a = GRAY.train_batch(images, policy, gen(7))
    b = GRAY.train_batch(images, policy, gen(7))
    c = GRAY.train_batch(images, policy, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (32, 1, 28, 28) and a.dtype == torch.float32


def test_normalize_uses_the_given_statistics(test_sample):
    x = ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.5,), (0.25,))(torch.from_numpy(test_sample.images))
    expected = (test_sample.images.astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(x.squeeze(1).numpy(), expected, rtol=1e-6)


def test_stratified_split_is_disjoint_balanced_and_seeded(test_sample):
    labels = np.repeat(np.arange(10), 100)
    train, val = stratified_split(labels, 0.1, seed=1)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 1000
    assert np.bincount(labels[val]).tolist() == [10] * 10
    again, _ = stratified_split(labels, 0.1, seed=1)
    other, _ = stratified_split(labels, 0.1, seed=2)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_fit_normalization_on_real_images(test_sample):
    mean, std = fit_normalization(test_sample.images)
    assert len(mean) == len(std) == 1
    assert 0.2 < mean[0] < 0.4 and 0.3 < std[0] < 0.4  # Fashion-MNIST: mean ~0.286, std ~0.353
    exact = test_sample.images.astype(np.float64) / 255
    assert mean[0] == pytest.approx(exact.mean()) and std[0] == pytest.approx(exact.std())


def test_fit_normalization_is_per_channel(test_sample):
    # Real images put in different channels at different brightness: each channel gets its own statistics.
    gray = test_sample.images[:100]
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)  # (N, 28, 28, 3)
    mean, std = fit_normalization(rgb)
    single, _ = fit_normalization(gray)
    assert len(mean) == 3 and mean[0] == pytest.approx(single[0])
    assert mean[1] == pytest.approx((gray // 2).astype(np.float64).mean() / 255)
    assert mean[2] == pytest.approx(1 - single[0], abs=1e-9)


def test_the_datasets_policy_fills_what_the_run_leaves_null():
    from modelyard.config import AugmentConfig

    assert AugmentPolicy.from_config(AugmentConfig(), "fashion_mnist") == AugmentPolicy(2, 0.5, 0.25)
    assert AugmentPolicy.from_config(AugmentConfig(), "cifar10") == AugmentPolicy(4, 0.5, 0.0)
    off = AugmentPolicy.from_config(AugmentConfig(crop_padding=0, hflip_prob=0, erasing_prob=0), "cifar10")
    assert off.is_identity and not AugmentPolicy().is_identity
