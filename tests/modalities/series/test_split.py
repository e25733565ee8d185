"""Series splits on disk: every frame stacked with the offsets of each series, read back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.modalities import get_modality
from modelyard.modalities.series.split import SplitFileError, read_npz, write_npz


def test_a_split_reads_back_exactly_with_its_lengths_and_channels(vowels, tmp_path):
    meta = write_npz(tmp_path / "train.npz", vowels)
    back = read_npz(tmp_path / "train.npz")
    assert len(back) == len(vowels) == 90
    assert all(np.array_equal(a, b) for a, b in zip(back.series, vowels.series))
    assert np.array_equal(back.labels, vowels.labels)
    lengths = [len(s) for s in vowels.series]
    assert meta == {"channels": 12, "length": [min(lengths), max(lengths)]}


def test_the_hash_follows_the_contents_not_the_file(vowels):
    series = get_modality("series")
    assert series.split_sha256(vowels) == series.split_sha256(vowels.take(np.arange(len(vowels))))
    changed = [s.copy() for s in vowels.series]
    changed[3][0, 0] += 1e-3
    assert series.split_sha256(vowels) != series.split_sha256(type(vowels)(changed, vowels.labels))
    relabelled = vowels.labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 9
    assert series.split_sha256(vowels) != series.split_sha256(type(vowels)(vowels.series, relabelled))


def test_offsets_that_do_not_cut_the_frames_are_refused_by_name(vowels, tmp_path):
    write_npz(tmp_path / "ok.npz", vowels)
    with np.load(tmp_path / "ok.npz") as npz:
        frames, offsets, labels = npz["frames"], npz["offsets"], npz["labels"]
    np.savez(tmp_path / "short.npz", frames=frames[:-5], offsets=offsets, labels=labels)
    with pytest.raises(SplitFileError, match="offsets do not cut"):
        read_npz(tmp_path / "short.npz")
    np.savez(tmp_path / "other.npz", images=frames)
    with pytest.raises(SplitFileError, match="want arrays 'frames', 'offsets', 'labels'"):
        read_npz(tmp_path / "other.npz")
