import numpy as np
import pytest
import torch

from modelyard.data.augment import (
    AugmentPolicy,
    augment_batch,
    fit_normalization,
    normalize,
    random_crop,
    random_erasing,
    random_hflip,
    stratified_split,
)


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
    a = augment_batch(images, policy, gen(7), 0.286, 0.353)
    b = augment_batch(images, policy, gen(7), 0.286, 0.353)
    c = augment_batch(images, policy, gen(8), 0.286, 0.353)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (32, 1, 28, 28) and a.dtype == torch.float32


def test_normalize_uses_the_given_statistics(test_sample):
    x = normalize(torch.from_numpy(test_sample.images), 0.5, 0.25)
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
    assert 0.2 < mean < 0.4 and 0.3 < std < 0.4  # Fashion-MNIST: mean ~0.286, std ~0.353
