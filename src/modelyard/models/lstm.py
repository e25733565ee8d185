"""A bidirectional LSTM (or GRU) trained from scratch over a sequence, max-pooled over time, then a linear
head: the baseline a Transformer must beat on text, and a recurrent classifier of time series.

On text it reads token ids (of a pretrained tokenizer's vocabulary, saved with the model) through an
embedding learnt from scratch; on a series, its frames (C numbers each) through a learnt linear projection.
The sequence is packed, so padding never reaches the recurrence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from modelyard.config import PATH_FIELD
from modelyard.modalities.text.preprocess import OFFLINE_DEFAULT
from modelyard.models import FamilyConfig


class LSTMConfig(FamilyConfig):
    """A bidirectional LSTM (or GRU) over embeddings learnt from scratch, max-pooled, then a linear head."""

    name: Literal["lstm"] = "lstm"
    modalities: ClassVar[tuple[str, ...]] = ("text", "series")
    tokenizer: str = Field(OFFLINE_DEFAULT, description="Text: whose tokenizer (and vocabulary) the ids come from.",
                           json_schema_extra=PATH_FIELD)
    max_length: int = Field(128, ge=8, le=4096, description="Steps read per input (tokens, special ones included); "
                                                             "longer inputs are truncated.")
    cell: Literal["lstm", "gru"] = "lstm"
    embedding_dim: int = Field(128, ge=8, le=4096, description="Width of the learnt embedding (text) or projection "
                                                                "(series) of each step.")
    hidden: int = Field(128, ge=8, le=4096, description="Units per direction.")
    layers: int = Field(1, ge=1, le=4)
    dropout: float = Field(0.3, ge=0, lt=1)
    embedding_init: Literal["random", "pretrained"] = Field(
        "random", description="Text: pretrained starts the embedding from the tokenizer's own model's token "
                              "embeddings (all-MiniLM-L6-v2's: 384 wide, which then sets the width; "
                              "embedding_dim is not used), trained further with the rest. random: from scratch.")

    def preprocessing(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "max_length": self.max_length}

    def builder_args(self, model_input: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
        # What the input layer needs: a vocabulary (token ids) or the width of a frame (a series' values).
        steps = {k: model_input[k] for k in ("vocab_size", "pad_id", "in_features") if k in model_input}
        width = self.embedding_dim
        if self.embedding_init == "pretrained":
            if "vocab_size" not in model_input:
                raise ValueError("model.embedding_init=pretrained needs text input (token ids); a series has none")
            width = self._pretrained_width()
        return {**steps, "num_classes": num_classes, "cell": self.cell, "embedding_dim": width,
                "hidden": self.hidden, "layers": self.layers, "dropout": self.dropout}

    def prepare(self, model: nn.Module) -> None:
        """With embedding_init=pretrained: the tokenizer's model's token embeddings into the embedding."""
        if self.embedding_init != "pretrained":
            return
        weights = self._pretrained_embeddings()
        if model.embedding is None or model.embedding.weight.shape != weights.shape:
            raise ValueError(f"{self.tokenizer}'s token embeddings are {tuple(weights.shape)}, the model's "
                             f"{tuple(model.embedding.weight.shape) if model.embedding is not None else None}")
        with torch.no_grad():
            model.embedding.weight.copy_(weights)

    def _pretrained_width(self) -> int:
        """The width of the tokenizer's model's token embeddings, from its config (no weights loaded)."""
        from transformers import AutoConfig

        from modelyard.modalities.text.preprocess import PretrainedError, resolve_pretrained

        try:
            return int(AutoConfig.from_pretrained(resolve_pretrained(self.tokenizer)).hidden_size)
        except OSError as exc:
            raise PretrainedError(f"cannot load {self.tokenizer!r}'s config: {exc}") from None

    def _pretrained_embeddings(self) -> torch.Tensor:
        """(vocabulary, width) token embeddings of the model the tokenizer comes from."""
        from transformers import AutoModel

        from modelyard.modalities.text.preprocess import PretrainedError, resolve_pretrained

        try:
            encoder = AutoModel.from_pretrained(resolve_pretrained(self.tokenizer))
        except OSError as exc:
            raise PretrainedError(f"cannot load {self.tokenizer!r}'s embeddings: {exc}") from None
        return encoder.get_input_embeddings().weight.detach().clone()


class RNNClassifier(nn.Module):
    def __init__(self, num_classes: int, cell: str, embedding_dim: int, hidden: int, layers: int, dropout: float,
                 vocab_size: int | None = None, pad_id: int = 0, in_features: int | None = None) -> None:
        super().__init__()
        if (vocab_size is None) == (in_features is None):
            raise ValueError("give vocab_size (token ids) or in_features (frames of values), not both")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id) if vocab_size else None
        self.projection = nn.Linear(in_features, embedding_dim) if in_features else None
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(embedding_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                       dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                values: torch.Tensor | None = None) -> torch.Tensor:
        steps = self.embedding(input_ids) if self.embedding is not None else self.projection(values)  # (B, T, E)
        lengths = attention_mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(steps), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=attention_mask.shape[1])
        out = out.masked_fill(attention_mask[:, :, None] == 0, float("-inf"))  # (B, T, 2H), padding never wins
        return self.head(self.dropout(out.max(dim=1).values))


def build(num_classes: int, cell: str, embedding_dim: int, hidden: int, layers: int, dropout: float,
          vocab_size: int | None = None, pad_id: int = 0, in_features: int | None = None) -> RNNClassifier:
    return RNNClassifier(num_classes, cell, embedding_dim, hidden, layers, dropout, vocab_size, pad_id, in_features)


# What `modelyard tune` varies by default (modelyard.tuning.space): AdamW's rate and decay, widths, depth,
# dropout, the batch and how long. Text recipes add token dropping (prepare.augment) in their own space.
SEARCH_SPACE = {
    "train.learning_rate": {"loguniform": [5e-4, 1e-2]},
    "train.weight_decay": {"loguniform": [1e-5, 0.1]},
    "train.batch_size": {"choice": [32, 64, 128]},
    "train.epochs": {"int": [4, 12]},
    "model.embedding_dim": {"choice": [64, 128, 256]},
    "model.hidden": {"choice": [64, 128, 256]},
    "model.layers": {"int": [1, 2]},
    "model.dropout": {"uniform": [0.1, 0.6]},
}

Config = LSTMConfig
