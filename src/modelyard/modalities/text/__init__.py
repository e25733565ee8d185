"""Texts: strings tokenized by the model's own tokenizer (saved with it); token-level augmentation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.modalities import EvaluationExtras, Limits, Modality
from modelyard.modalities.text.augment import TextPolicy
from modelyard.modalities.text.codec import TextCodec
from modelyard.modalities.text.preprocess import TextBatches, TextPreprocessor, load_tokenizer_json
from modelyard.modalities.text.split import TextSchema, TextSplit, read_jsonl, text_sha256, write_jsonl
from modelyard.modalities.text.validation import duplicate_keys, expectations, lengths_table, row_table

__all__ = ["MODALITY", "TextModality", "TextPolicy", "TextPreprocessor", "TextSchema", "TextSplit"]

MISTAKES_SHOWN = 10


class TextModality(Modality):
    name: ClassVar[str] = "text"
    noun: ClassVar[str] = "texts"
    runtime_packages: ClassVar[tuple[str, ...]] = ("tokenizers",)
    file_suffix: ClassVar[str] = ".jsonl"

    def write_split(self, path: Path, split: TextSplit) -> dict[str, Any]:
        return write_jsonl(path, split)

    def read_split(self, path: Path) -> TextSplit:
        return read_jsonl(path)

    def make_split(self, inputs: list[Any], labels: Any) -> TextSplit:
        return TextSplit(texts=[str(x) for x in inputs], labels=np.asarray(labels, dtype=np.int64))

    def split_sha256(self, split: TextSplit) -> str:
        return text_sha256(split.texts, split.labels)

    def row_table(self, name: str, split: TextSplit):
        return row_table(name, split)

    def extra_tables(self, splits: Mapping[str, TextSplit]):
        return {"lengths": lengths_table(splits)}

    def expectations(self, schema: TextSchema, num_classes: int) -> dict[str, list[Any]]:
        return expectations(schema, num_classes)

    def duplicate_keys(self, split: TextSplit) -> dict[str, list[Any]]:
        return duplicate_keys(split)

    def fit_statistics(self, split: TextSplit) -> dict[str, Any]:
        return {}  # the tokenizer is the model's, not fitted here

    def policy(self, defaults: Mapping[str, Any], changes: Mapping[str, Any]) -> TextPolicy:
        return TextPolicy.from_dict({**defaults, **changes})

    def policy_from_dict(self, doc: Mapping[str, Any]) -> TextPolicy:
        return TextPolicy.from_dict(doc)

    def fit_preprocessor(self, request: Mapping[str, Any], statistics: Mapping[str, Any],
                         schema: TextSchema) -> TextPreprocessor:
        """The family's `tokenizer` (a pretrained folder or id), reading at most its `max_length` tokens."""
        source = request["tokenizer"]
        return TextPreprocessor(tokenizer_json=load_tokenizer_json(source), max_length=int(request["max_length"]),
                                source=source)

    def preprocessor_from_dict(self, doc: Mapping[str, Any]) -> TextPreprocessor:
        return TextPreprocessor.from_dict(doc)

    def training_arrays(self, split: TextSplit, preprocessor: TextPreprocessor) -> dict[str, np.ndarray]:
        """Tokenised once, where the task is prepared: workers get token ids, not texts."""
        ids, lengths, _ = preprocessor.tokenize(split.texts)
        return {"ids": ids, "lengths": lengths, "labels": split.labels}

    def batch_adapter(self, preprocessor: TextPreprocessor, policy: TextPolicy) -> TextBatches:
        return TextBatches(preprocessor, policy)

    def evaluation_extras(self, probs: np.ndarray, split: TextSplit, labels: list[str]) -> EvaluationExtras:
        """The texts the model gets wrong with the highest confidence: where labels or the model are most off."""
        predicted = probs.argmax(axis=1)
        wrong = np.flatnonzero(predicted != split.labels)
        worst = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:MISTAKES_SHOWN]
        mistakes = [{"index": int(i), "text": split.texts[i], "label": labels[int(split.labels[i])],
                     "predicted": labels[int(predicted[i])], "confidence": round(float(probs[i, predicted[i]]), 4)}
                    for i in worst]
        lines = ["## Most confidently wrong", "", "| text | label | predicted | confidence |", "|---|---|---|---|"]
        for m in mistakes:
            text = " ".join(m["text"].split())
            text = ((text[:197] + "…") if len(text) > 200 else text).replace("|", r"\|")
            lines.append(f"| {text} | {m['label']} | {m['predicted']} | {m['confidence']:.3f} |")
        return EvaluationExtras(files={"mistakes.json": mistakes}, markdown="\n".join(lines) + "\n" if mistakes else "")

    def input_example(self, split: TextSplit, count: int) -> Any:
        import pandas as pd

        return pd.DataFrame({"text": list(split.texts[:count])})

    def from_pyfunc(self, model_input: Any) -> list[str]:
        """A DataFrame with a `text` column, a Series, a list of strings or one string."""
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if "text" not in model_input.columns:
                raise ValueError(f"expected a 'text' column, got columns {list(model_input.columns)}")
            return model_input["text"].tolist()
        if isinstance(model_input, pd.Series):
            return model_input.tolist()
        return [model_input] if isinstance(model_input, str) else list(model_input)

    def codec(self, preprocessor: TextPreprocessor, limits: Limits) -> TextCodec:
        return TextCodec(preprocessor, limits)

    def write_samples(self, split: TextSplit, classes: list[str], out_dir: Path) -> list[Path]:
        """The first test text of each class as `<class>.json`, a request body: curl -d @<file> ...."""
        from modelyard.modalities._samples import write_first_of_each_class

        def write(path: Path, row: int) -> None:
            path.write_text(json.dumps({"text": split.texts[row]}, ensure_ascii=False) + "\n")

        return write_first_of_each_class(split.labels, classes, out_dir, ".json", write)

    def request_example(self, sample: Path, url: str) -> str:
        return f"curl -H 'content-type: application/json' -d @{sample} {url}"


MODALITY = TextModality()
