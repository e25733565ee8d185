"""The text preprocessor (the tokenizer saved with the model) and token-level augmentation on the device."""

from __future__ import annotations

import json

import pytest
import torch

from modelyard.data.preprocess import InvalidInputError
from modelyard.data.text import TextPreprocessor, batch_inputs, token_delete, token_swap
from modelyard.models.text import BertConfig

SENTENCES = ["A gorgeous, witty, seductive movie.", "Dull.",
             "The story and the friendship proceeds in such a way that you're watching a soap opera."]


@pytest.fixture(scope="module")
def pre() -> TextPreprocessor:
    return BertConfig(max_length=16).text_preprocessor()


def test_the_tokenizer_travels_in_model_json_and_rebuilds_the_same(pre):
    doc = json.loads(json.dumps(pre.to_dict()))
    again = TextPreprocessor.from_dict(doc)
    assert doc["source"] == "all-MiniLM-L6-v2" and len(doc["tokenizer_sha256"]) == 64
    a, b = pre.tokenize(SENTENCES), again.tokenize(SENTENCES)
    assert all((x == y).all() for x, y in zip(a, b))
    assert again.vocab_size == 30522 and again.pad_id == 0


def test_dynamic_padding_and_truncation_flags(pre):
    ids, lengths, truncated = pre.tokenize(SENTENCES)
    assert lengths.tolist()[1] == 4  # [CLS] dull . [SEP]
    assert truncated.tolist() == [False, False, True] and lengths[2] == 16
    assert ids[1, 4:].tolist() == [0] * (ids.shape[1] - 4)
    inputs = pre(SENTENCES[:2])
    assert inputs["input_ids"].shape == (2, lengths[0]) and inputs["attention_mask"][1].tolist()[:5] == [1, 1, 1, 1, 0]
    assert ids[0, 0] == 101 and ids[0, lengths[0] - 1] == 102  # [CLS] ... [SEP]


@pytest.mark.parametrize("bad, code", [([""], "empty_text"), (["  \n"], "empty_text"), ([3], "not_a_string"),
                                       ({"text": "x"}, "bad_type"), (["x" * 100_001], "text_too_long")])
def test_unusable_texts_are_refused_with_a_code(pre, bad, code):
    with pytest.raises(InvalidInputError) as err:
        pre.check_batch(bad)
    assert err.value.code == code


def test_token_deletion_keeps_special_tokens_and_order(pre):
    ids, lengths, _ = pre.tokenize(SENTENCES * 20)
    ids, lengths = torch.from_numpy(ids).long(), torch.from_numpy(lengths)
    protected = torch.tensor(pre.special_ids())
    gen = torch.Generator().manual_seed(0)
    out, new_lengths = token_delete(ids, lengths, 0.3, protected, pre.pad_id, gen)
    assert (new_lengths <= lengths).all() and (new_lengths < lengths).any()
    for row in range(len(ids)):
        before = ids[row, : lengths[row]].tolist()
        after = out[row, : new_lengths[row]].tolist()
        assert after[0] == 101 and after[-1] == 102
        it = iter(before)
        assert all(token in it for token in after)  # a subsequence: order kept
        assert (out[row, new_lengths[row]:] == pre.pad_id).all()
    again, _ = token_delete(ids, lengths, 0.3, protected, pre.pad_id, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded


def test_token_swap_permutes_neighbours_only(pre):
    ids, lengths, _ = pre.tokenize(SENTENCES * 20)
    ids, lengths = torch.from_numpy(ids).long(), torch.from_numpy(lengths)
    out = token_swap(ids, lengths, 0.5, torch.tensor(pre.special_ids()), torch.Generator().manual_seed(1))
    assert not torch.equal(out, ids)
    for row in range(len(ids)):
        assert sorted(out[row].tolist()) == sorted(ids[row].tolist())
        assert out[row, 0] == 101 and out[row, lengths[row] - 1] == 102
        moved = (out[row] != ids[row]).nonzero().flatten().tolist()
        for pos in moved:
            assert out[row, pos] in (ids[row, pos - 1], ids[row, pos + 1])


def test_batch_inputs_cut_to_the_longest_text():
    ids = torch.tensor([[101, 5, 6, 102, 0, 0, 0], [101, 7, 102, 0, 0, 0, 0]])
    inputs = batch_inputs(ids, torch.tensor([4, 3]))
    assert inputs["input_ids"].shape == (2, 4)
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
