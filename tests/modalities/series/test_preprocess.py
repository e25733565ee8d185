"""The fitted preprocessing of a series model: what it takes, how it batches, and the normalisation its graph
applies, so a series is read the same alone or padded beside longer ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modelyard.modalities import InvalidInputError, get_modality
from modelyard.modalities.series import SeriesPreprocessor, SeriesSchema


@pytest.fixture(scope="module")
def pre(vowels) -> SeriesPreprocessor:
    series = get_modality("series")
    return series.fit_preprocessor({}, series.fit_statistics(vowels), SeriesSchema(channels=12, length=(7, 29)))


def test_fitted_statistics_are_the_frames_and_the_longest_series_is_the_headroom(vowels, pre):
    frames = np.concatenate(vowels.series).astype(np.float64)
    assert pre.mean == pytest.approx(frames.mean(0).tolist()) and pre.std == pytest.approx(frames.std(0).tolist())
    assert pre.max_length == 4 * max(len(s) for s in vowels.series)  # no family asked: 4x the longest
    asked = get_modality("series").fit_preprocessor({"max_length": 50}, {"mean": pre.mean, "std": pre.std,
                                                                          "max_length": 29}, SeriesSchema(12, (7, 29)))
    assert asked.max_length == 50
    assert SeriesPreprocessor.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre


@pytest.mark.parametrize(("inputs", "code"), [
    ("a string", "bad_type"),
    ([[[1.0] * 12, [1.0] * 11]], "bad_shape"),  # frames of different widths
    ([[["x"] * 12]], "bad_shape"),
    ([[[1.0] * 13]], "bad_channels"),
    ([[]], "bad_shape"),
    ([np.zeros((0, 12))], "empty_series"),
    ([np.zeros((200, 12))], "series_too_long"),
    ([np.full((5, 12), np.nan)], "not_finite"),
])
def test_unusable_series_are_refused_with_a_code(pre, inputs, code):
    with pytest.raises(InvalidInputError) as exc:
        pre.check_batch(inputs)
    assert exc.value.code == code and exc.value.message


def test_feeds_batch_similar_lengths_and_mask_the_padding(vowels, pre):
    series = pre.check_batch(vowels.series[:20])
    seen = []
    for rows, feeds in pre.feeds(series, batch_size=8):
        lengths = feeds["attention_mask"].sum(1).numpy()
        assert feeds["values"].shape == (len(rows), max(lengths), 12)
        assert lengths.tolist() == [len(series[r]) for r in rows]
        assert feeds["values"][feeds["attention_mask"] == 0].abs().sum() == 0
        seen += rows.tolist()
    assert sorted(seen) == list(range(20))
    by_length = [len(series[r]) for r in seen]
    assert by_length == sorted(by_length)  # each batch pads only to its own longest


class Probe(torch.nn.Module):
    """Returns, per series, the mean of its real normalised frames and how many there were."""

    def forward(self, values, attention_mask):
        mask = attention_mask[:, :, None].float()
        return torch.cat([(values * mask).sum(1) / mask.sum(1), attention_mask.sum(1, keepdim=True).float()], 1)


def test_the_graph_normalises_real_frames_and_padding_changes_nothing(vowels, pre):
    graph = pre.graph(Probe())
    short, long = vowels.series[0], max(vowels.series, key=len)
    alone = graph(**next(pre.feeds([short], 1))[1])
    _, padded_feeds = next(pre.feeds([short, long], 2))
    padded = graph(**padded_feeds)
    assert torch.allclose(padded[0], alone[0], atol=1e-6)  # the same series, alone or padded
    expected = (short - np.asarray(pre.mean)) / np.asarray(pre.std)
    assert alone[0, :12].numpy() == pytest.approx(expected.mean(0), abs=1e-5)
    assert alone[0, 12].item() == len(short)
