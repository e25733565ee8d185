"""The fully convolutional network over time: padding is left out of its batch-norm statistics and its
pooling, so a series is classified the same alone or beside longer ones, in training and in use."""

from __future__ import annotations

import pytest
import torch

from helpers.paths import FIXTURES
from modelyard.modalities.series.preprocess import pad
from modelyard.modalities.series.split import read_npz
from modelyard.models import build_model, family_config
from modelyard.models.fcn import MaskedBatchNorm1d


@pytest.fixture(scope="module")
def vowels():
    return read_npz(FIXTURES / "japanese_vowels_test_90.npz")


def batch(series):
    values, mask = pad(series, 12)
    return torch.from_numpy(values), torch.from_numpy(mask)


def test_training_statistics_come_from_the_real_frames_only(vowels):
    values, mask = batch(vowels.series[:16])
    norm = MaskedBatchNorm1d(12).train()
    with torch.no_grad():
        out = norm(values.transpose(1, 2), mask[:, None, :].float())
    real = values[mask.bool()]  # (frames, 12): padding dropped
    normed = out.transpose(1, 2)[mask.bool()]
    assert normed.mean(0).abs().max() < 1e-4 and normed.std(0, unbiased=False) == pytest.approx(1, abs=1e-3)
    assert norm.running_mean == pytest.approx(0.1 * real.mean(0), abs=1e-5)  # one momentum step from zero


def test_a_series_is_classified_the_same_alone_or_padded_beside_longer_ones(vowels):
    family = family_config({"name": "fcn", "widths": [16, 32, 16]})
    torch.manual_seed(0)
    model = build_model("fcn", **family.builder_args({"in_features": 12}, 9))
    model.train()
    with torch.no_grad():  # some training steps' worth of running statistics, from padded batches
        for start in range(0, 80, 16):
            model(*batch(vowels.series[start:start + 16]))
    model.eval()
    short, long = vowels.series[0], max(vowels.series, key=len)
    with torch.no_grad():
        alone = model(*batch([short]))
        padded = model(*batch([short, long]))
    assert alone.shape == (1, 9) and torch.allclose(alone[0], padded[0], atol=1e-5)


@pytest.mark.parametrize(("fields", "needle"), [
    ({"kernels": [8, 5, 3]}, "kernel sizes must be odd"),
    ({"widths": [8, 8], "kernels": [3, 3, 3]}, "widths has 2 blocks but model.kernels 3"),
])
def test_impossible_architectures_are_refused_by_name(fields, needle):
    with pytest.raises(ValueError, match=needle):
        family_config({"name": "fcn", **fields}).builder_args({"in_features": 12}, 9)
