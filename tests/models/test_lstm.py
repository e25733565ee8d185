"""The recurrent family on its two kinds of sequence: token ids (an embedding) and a series' frames (a
projection), packed, so padding never reaches the recurrence."""

from __future__ import annotations

import pytest
import torch

from helpers.paths import FIXTURES
from modelyard.modalities import get_modality
from modelyard.modalities.series import SeriesSchema
from modelyard.modalities.series.split import read_npz
from modelyard.models import build_model, family_config


@pytest.fixture(scope="module")
def vowels():
    return read_npz(FIXTURES / "japanese_vowels_test_90.npz")


def test_on_series_it_projects_frames_and_padding_changes_no_answer(vowels):
    series = get_modality("series")
    family = family_config({"name": "lstm", "embedding_dim": 16, "hidden": 16})
    pre = series.fit_preprocessor(family.preprocessing(), series.fit_statistics(vowels), SeriesSchema(12, (7, 29)))
    args = family.builder_args(pre.model_input(), 9)
    assert "vocab_size" not in args and args["in_features"] == 12 and pre.max_length == family.max_length
    torch.manual_seed(0)
    graph = pre.graph(build_model("lstm", **args).eval())
    short, long = vowels.series[0], max(vowels.series, key=len)
    with torch.no_grad():
        alone = graph(**next(pre.feeds([short], 1))[1])
        _, feeds = next(pre.feeds([short, long], 2))
        padded = graph(**feeds)
    assert torch.allclose(alone[0], padded[0], atol=1e-5)  # the same series, alone or padded


def test_a_model_gets_one_input_layer_never_both():
    with pytest.raises(ValueError, match="vocab_size .* or in_features"):
        build_model("lstm", num_classes=2, cell="lstm", embedding_dim=8, hidden=8, layers=1, dropout=0.0,
                    vocab_size=100, in_features=12)


def test_pretrained_embeddings_start_from_the_tokenizers_own_model_and_series_refuse_them(vowels):
    """embedding_init=pretrained: all-MiniLM-L6-v2's token embeddings (the same vocabulary as the ids the
    tokenizer makes), 384 wide whatever embedding_dim says; the model carries them in its own weights."""
    from transformers import AutoModel

    from modelyard.artifact import ModelSpec
    from modelyard.data.datasets import get_dataset
    from modelyard.modalities.text.preprocess import resolve_pretrained

    text = get_modality("text")
    family = family_config({"name": "lstm", "embedding_init": "pretrained", "embedding_dim": 64, "hidden": 16})
    pre = text.fit_preprocessor(family.preprocessing(), {}, get_dataset("rt_polarity").schema)
    args = family.builder_args(pre.model_input(), 2)
    assert args["embedding_dim"] == 384 and args["vocab_size"] == 30522
    model = ModelSpec(family="lstm", args=args, labels=["negative", "positive"], preprocessing=pre.to_dict()).build()
    family.prepare(model)
    minilm = AutoModel.from_pretrained(resolve_pretrained(family.tokenizer)).get_input_embeddings().weight
    assert torch.equal(model.embedding.weight, minilm)
    scratch = family_config({"name": "lstm", "hidden": 16})
    assert scratch.builder_args(pre.model_input(), 2)["embedding_dim"] == 128  # random: its own width

    series = get_modality("series")
    spre = series.fit_preprocessor(family.preprocessing(), series.fit_statistics(vowels), SeriesSchema(12, (7, 29)))
    with pytest.raises(ValueError, match="needs text input"):
        family.builder_args(spre.model_input(), 9)
