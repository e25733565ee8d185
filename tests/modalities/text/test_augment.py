"""modelyard.modalities.text.augment: token deletion and neighbour swaps on the training device, which never
touch special tokens or padding, on real Rotten Tomatoes sentences; and the text policy."""

from __future__ import annotations

import pytest
import torch

from modelyard.data.dataset import load_split
from modelyard.data.datasets import get_dataset
from modelyard.modalities import get_modality
from modelyard.modalities.text import TextPolicy, TextSchema
from modelyard.modalities.text.augment import token_delete, token_swap
from modelyard.models.bert import BertConfig


@pytest.fixture(scope="module")
def pre():
    return get_modality("text").fit_preprocessor(BertConfig(max_length=32).preprocessing(), {}, TextSchema())


@pytest.fixture(scope="module")
def batch(pre, rt_polarity_dir):
    """200 real test sentences as token ids (some truncated at 32 tokens) and their lengths."""
    texts = load_split(rt_polarity_dir, "test").texts[:200]
    ids, lengths, truncated = pre.tokenize(texts)
    assert truncated.any() and not truncated.all()
    return torch.from_numpy(ids).long(), torch.from_numpy(lengths)


def test_token_deletion_keeps_special_tokens_and_order(pre, batch):
    ids, lengths = batch
    protected = torch.tensor(pre.special_ids())
    gen = torch.Generator().manual_seed(0)
    out, new_lengths = token_delete(ids, lengths, 0.3, protected, pre.pad_id, gen)
    assert (new_lengths <= lengths).all() and (new_lengths < lengths).any()
    dropped = (lengths - new_lengths).sum() / (lengths - 2).sum()  # share of content tokens dropped
    assert 0.25 < dropped < 0.35
    for row in range(len(ids)):
        before = ids[row, : lengths[row]].tolist()
        after = out[row, : new_lengths[row]].tolist()
        assert after[0] == 101 and after[-1] == 102
        it = iter(before)
        assert all(token in it for token in after)  # a subsequence: order kept
        assert (out[row, new_lengths[row]:] == pre.pad_id).all()
    again, _ = token_delete(ids, lengths, 0.3, protected, pre.pad_id, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded


def test_token_deletion_at_zero_changes_nothing(pre, batch):
    ids, lengths = batch
    out, new_lengths = token_delete(ids, lengths, 0.0, torch.tensor(pre.special_ids()), pre.pad_id,
                                    torch.Generator().manual_seed(0))
    assert torch.equal(out, ids) and torch.equal(new_lengths, lengths)


def test_token_swap_permutes_neighbours_only(pre, batch):
    ids, lengths = batch
    out = token_swap(ids, lengths, 0.5, torch.tensor(pre.special_ids()), torch.Generator().manual_seed(1))
    assert not torch.equal(out, ids)
    for row in range(len(ids)):
        assert sorted(out[row].tolist()) == sorted(ids[row].tolist())
        assert out[row, 0] == 101 and out[row, lengths[row] - 1] == 102
        assert (out[row, lengths[row]:] == pre.pad_id).all()  # padding stays where it was
        moved = (out[row] != ids[row]).nonzero().flatten().tolist()
        for pos in moved:
            assert out[row, pos] in (ids[row, pos - 1], ids[row, pos + 1])


def test_the_policy_defaults_are_off_and_unknown_settings_are_named():
    assert TextPolicy().is_identity and not TextPolicy(token_swap_prob=0.1).is_identity
    for name in ("rt_polarity", "bbc_news"):
        assert TextPolicy.from_dict(get_dataset(name).augment) == TextPolicy()
    with pytest.raises(ValueError) as exc:
        TextPolicy.from_dict({"token_delete_prob": 0.1, "hflip_prob": 0.5})
    assert str(exc.value) == ("hflip_prob: not a text augmentation setting; the text policy has "
                              "token_delete_prob, token_swap_prob")
    merged = get_modality("text").policy({"token_delete_prob": 0.1}, {"token_swap_prob": 0.2})
    assert merged == TextPolicy(0.1, 0.2)


@pytest.mark.parametrize("settings", [{"token_delete_prob": 1.0}, {"token_swap_prob": -0.1}])
def test_probabilities_outside_zero_to_one_are_refused(settings):
    with pytest.raises(ValueError, match=rf"{next(iter(settings))} must be in \[0, 1\)"):
        TextPolicy.from_dict(settings)
