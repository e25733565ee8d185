"""Series augmentation on normalised batches: jitter and scaling leave padding alone, time warp moves frames
along time keeping a series' length and its ends, and every draw follows the seed."""

from __future__ import annotations

import pytest
import torch

from modelyard.modalities.series import SeriesPolicy, SeriesPreprocessor
from modelyard.modalities.series.augment import jitter, scale, time_warp
from modelyard.modalities.series.preprocess import SeriesBatches, pad


def batch(vowels, n=16):
    values, mask = pad(vowels.series[:n], 12)
    return torch.from_numpy(values), torch.from_numpy(mask), torch.from_numpy(mask.sum(1))


def test_jitter_adds_noise_of_the_asked_size_to_real_frames_only(vowels):
    x, mask, _ = batch(vowels)
    out = jitter(x, mask, 0.1, torch.Generator().manual_seed(0))
    noise = (out - x)[mask.bool()]
    assert noise.std().item() == pytest.approx(0.1, rel=0.1)
    assert torch.equal(out[~mask.bool()], x[~mask.bool()])  # padding stays as it was


def test_scaling_multiplies_each_series_channel_by_one_factor(vowels):
    x, mask, _ = batch(vowels)
    out = scale(x, 0.2, torch.Generator().manual_seed(1))
    real = mask.bool()
    ratio = torch.where(real[:, :, None] & (x.abs() > 1e-3), out / x, torch.nan)
    per_channel = torch.nanmean(ratio, dim=1)
    spread = torch.nan_to_num((ratio - per_channel[:, None]).abs(), nan=0.0)
    assert spread.max() < 1e-4  # the same factor on every frame of a series' channel
    assert per_channel.std().item() == pytest.approx(0.2, rel=0.3)


def test_time_warp_keeps_length_ends_and_order_and_moves_the_middle(vowels):
    x, _, lengths = batch(vowels)
    # A ramp 0, 1, 2, ... on every channel shows where each output frame was read from.
    ramp = torch.arange(x.shape[1], dtype=torch.float32)[None, :, None].expand_as(x).clone()
    ramp = ramp * (torch.arange(x.shape[1])[None, :] < lengths[:, None])[:, :, None]
    warped = time_warp(ramp, lengths, 1.0, 0.3, torch.Generator().manual_seed(2))
    for row, n in enumerate(lengths.tolist()):
        read = warped[row, :n, 0]
        assert read[0] == 0 and read[-1] == pytest.approx(n - 1, abs=1e-4)  # the ends stay
        assert torch.all(read[1:] >= read[:-1] - 1e-5)  # time still runs forwards
        assert torch.all(warped[row, n:] == 0)  # padding stays padding
    assert (warped - ramp).abs().max() > 0.5  # and frames did move


def test_a_warp_probability_of_zero_or_no_generator_draw_changes_nothing(vowels):
    x, _, lengths = batch(vowels)
    assert torch.equal(time_warp(x, lengths, 0.0, 0.3, torch.Generator().manual_seed(3)), x)


def test_training_batches_are_normalised_augmented_and_reproducible(vowels):
    mean = torch.cat([torch.from_numpy(s) for s in vowels.series]).mean(0)
    std = torch.cat([torch.from_numpy(s) for s in vowels.series]).std(0)
    pre = SeriesPreprocessor(12, tuple(mean.tolist()), tuple(std.tolist()), max_length=64, max_abs_value=1e4)
    values, mask = pad(vowels.series, 12)
    rows = {"values": torch.from_numpy(values), "lengths": torch.from_numpy(mask.sum(1)),
            "labels": torch.from_numpy(vowels.labels)}
    plain, _ = SeriesBatches(pre, SeriesPolicy()).eval_batch(rows)
    real = plain["attention_mask"].bool()
    assert plain["values"][real].mean().abs() < 0.05 and plain["values"][real].std() == pytest.approx(1, abs=0.05)
    policy = SeriesPolicy(jitter_std=0.05, scale_std=0.1, warp_prob=0.5)
    a, _ = SeriesBatches(pre, policy).train_batch(rows, torch.Generator().manual_seed(7))
    b, _ = SeriesBatches(pre, policy).train_batch(rows, torch.Generator().manual_seed(7))
    c, _ = SeriesBatches(pre, policy).train_batch(rows, torch.Generator().manual_seed(8))
    assert torch.equal(a["values"], b["values"]) and not torch.equal(a["values"], c["values"])
    assert torch.equal(a["attention_mask"], plain["attention_mask"])


@pytest.mark.parametrize(("doc", "needle"), [
    ({"jitter": 0.1}, "jitter: not a series augmentation setting; the series policy has jitter_std"),
    ({"jitter_std": "a bit"}, "jitter_std must be a number"),
    ({"warp_prob": 1.5}, "warp_prob must be a probability"),
    ({"warp_max": 1.0}, r"warp_max must be in \[0, 1\)"),
])
def test_a_policy_setting_that_cannot_be_is_refused_by_name(doc, needle):
    with pytest.raises(ValueError, match=needle):
        SeriesPolicy.from_dict(doc)
