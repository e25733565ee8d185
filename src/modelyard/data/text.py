"""The fitted preprocessing of a text model: its tokenizer, saved with the model, and the token-level
augmentation applied to training batches on the device.

`TextPreprocessor` carries the tokenizer itself (the `tokenizer.json` of a Hugging Face fast tokenizer, as
a string) and `max_length`, in the model's `model.json`: evaluation, the MLflow pyfunc and serving rebuild
the exact tokenizer the model was trained with, from the model alone, with the `tokenizers` library
(no model hub, no folder the training machine had).

    texts --encode--> input_ids / attention_mask (B, longest in the batch <= max_length) + truncated flags
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modelyard.data.errors import InvalidInputError

MAX_TEXT_CHARS = 100_000  # one request's text; far past any max_length, small enough to tokenize quickly


@dataclass(frozen=True)
class TextPreprocessor:
    tokenizer_json: str  # a Hugging Face fast tokenizer, serialised
    max_length: int  # tokens, special tokens included; longer texts are truncated
    source: str = ""  # where the tokenizer came from (a folder or a model id)
    kind: str = "text"

    def __post_init__(self) -> None:
        if self.max_length < 4:
            raise ValueError(f"max_length must be at least 4 tokens, got {self.max_length}")

    @property
    def tokenizer(self) -> Any:
        """The `tokenizers.Tokenizer`, built once per preprocessor, truncating at max_length, no padding."""
        cache = self.__dict__.get("_tokenizer")
        if cache is None:
            from tokenizers import Tokenizer

            cache = Tokenizer.from_str(self.tokenizer_json)
            cache.no_padding()
            cache.enable_truncation(max_length=self.max_length)
            self.__dict__["_tokenizer"] = cache
        return cache

    @property
    def pad_id(self) -> int:
        padding = self.tokenizer.padding  # None once no_padding() ran; the pad token is in the vocab
        token = "[PAD]" if padding is None else padding["pad_token"]
        pad = self.tokenizer.token_to_id(token)
        return 0 if pad is None else int(pad)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    def special_ids(self) -> list[int]:
        return sorted({int(i) for i in self.tokenizer.encode("", add_special_tokens=True).ids} | {self.pad_id})

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids padded to the longest (N, L) int32, their lengths (N,), and which texts were truncated."""
        encodings = self.tokenizer.encode_batch(list(texts))
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        ids = np.full((len(encodings), max(int(lengths.max(initial=1)), 1)), self.pad_id, dtype=np.int32)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
        truncated = np.array([bool(e.overflowing) for e in encodings], dtype=bool)
        return ids, lengths, truncated

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """What evaluation and serving feed the model (CPU tensors; move them to the model's device)."""
        ids, lengths, _ = self.tokenize(texts)
        return batch_inputs(torch.from_numpy(ids).long(), torch.from_numpy(lengths))

    def check_batch(self, texts: Any) -> list[str]:
        """A list of non-empty strings, each at most MAX_TEXT_CHARS characters."""
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts, np.ndarray):
            texts = texts.ravel().tolist()
        if not isinstance(texts, (list, tuple)):
            raise InvalidInputError("bad_type", f"expected a list of texts, got {type(texts).__name__}")
        out = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError("not_a_string", f"text {i} is a {type(text).__name__}, not a string")
            if not text.strip():
                raise InvalidInputError("empty_text", f"text {i} is empty or only whitespace")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidInputError("text_too_long", f"text {i} has {len(text)} characters; at most "
                                                         f"{MAX_TEXT_CHARS}")
            out.append(text)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "text", "max_length": self.max_length, "source": self.source,
                "tokenizer_sha256": hashlib.sha256(self.tokenizer_json.encode()).hexdigest(),
                "tokenizer_json": self.tokenizer_json}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TextPreprocessor:
        if doc.get("kind") != "text":
            raise ValueError(f"not a text preprocessor: kind {doc.get('kind')!r}")
        return cls(tokenizer_json=doc["tokenizer_json"], max_length=int(doc["max_length"]),
                   source=doc.get("source", ""))


def load_tokenizer_json(folder_or_id: str) -> str:
    """tokenizer.json of a Hugging Face tokenizer (a local folder, or a hub id when the hub is reachable)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder_or_id)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{folder_or_id}: a fast (Rust) tokenizer is needed; this one is {type(tokenizer).__name__}")
    return backend.to_str()


def batch_inputs(ids: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask cut to the longest text of the batch (dynamic padding)."""
    longest = int(lengths.max()) if len(lengths) else 1
    ids = ids[:, :longest]
    mask = (torch.arange(longest, device=ids.device)[None, :] < lengths[:, None].to(ids.device)).long()
    return {"input_ids": ids.long(), "attention_mask": mask}


# ---- token-level augmentation on the training device: pure functions of (batch, generator) ---------------

def token_delete(ids: torch.Tensor, lengths: torch.Tensor, prob: float, protected: torch.Tensor, pad_id: int,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop each content token with probability `prob` (special tokens and padding stay); left-compacted."""
    pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
    inside = pos < lengths[:, None]
    content = inside & ~torch.isin(ids, protected)
    drop = content & (torch.rand(ids.shape, generator=gen, device=ids.device) < prob)
    keep = inside & ~drop
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, in their order
    new_ids = torch.gather(ids, 1, order)
    new_lengths = keep.sum(1)
    new_ids = new_ids.masked_fill(pos >= new_lengths[:, None], pad_id)
    return new_ids, new_lengths


def token_swap(ids: torch.Tensor, lengths: torch.Tensor, prob: float, protected: torch.Tensor,
               gen: torch.Generator) -> torch.Tensor:
    """Swap neighbouring content tokens: each position starts a swap with probability `prob` (no overlaps)."""
    n = ids.shape[1]
    pos = torch.arange(n, device=ids.device)[None, :]
    content = (pos < lengths[:, None]) & ~torch.isin(ids, protected)
    pair = content[:, :-1] & content[:, 1:]
    start = pair & (torch.rand(pair.shape, generator=gen, device=ids.device) < prob)
    start[:, 1:] &= ~start[:, :-1]  # a token takes part in one swap at most
    src = pos.expand_as(ids).clone()
    src[:, :-1] += start.long()
    src[:, 1:] -= start.long()
    return torch.gather(ids, 1, src)
