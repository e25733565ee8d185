"""The evaluate stage: score a saved model on the untouched test split, through the serving Predictor."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.data.dataset import load_split, modality_of, read_metadata
from modelyard.evaluation.metrics import classification_metrics
from modelyard.evaluation.plots import plot_confusion_matrix, plot_history
from modelyard.evaluation.report import render_report
from modelyard.inference import Predictor
from modelyard.modalities import Split

log = logging.getLogger(__name__)

HEADLINE = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "count")


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]
    test_set_sha256: str
    output_dir: str
    report_path: str

    @property
    def summary(self) -> dict[str, float]:
        """The headline numbers, as `metrics.json` holds them for DVC."""
        return {k: self.metrics[k] for k in HEADLINE}


def score_model_dir(model_dir: str | os.PathLike[str], dataset_dir: str | os.PathLike[str], split: str = "test",
                    batch_size: int = 256) -> dict[str, Any]:
    """Metrics of the model in `model_dir` on one split."""
    return _score(model_dir, dataset_dir, split, batch_size)[0]


def feedback_holdout(model_dir: Any, meta: dict[str, Any], batch_size: int = 256) -> dict[str, Any] | None:
    """Accuracy on the held-out share of the feedback set the training split took rows from (`dataset.json`'s
    `feedback`), reported apart from the test split's; None without one."""
    feedback = meta.get("feedback") or {}
    if not feedback.get("holdout_rows"):
        return None
    scored = score_model_dir(model_dir, feedback["path"], "holdout", batch_size)
    log.info("feedback holdout accuracy %.4f on %d rows", scored["accuracy"], scored["count"])
    return {"accuracy": scored["accuracy"], "count": scored["count"], "sha256": feedback["sha256"],
            "train_rows": feedback["train_rows"]}


def _score(model_dir: Any, dataset_dir: Any, split: str, batch_size: int) -> tuple[dict[str, Any], np.ndarray, Split]:
    predictor = Predictor.from_dir(model_dir)
    data = load_split(dataset_dir, split)
    probs = predictor.predict_proba(data.inputs, batch_size=batch_size)
    return classification_metrics(data.labels, probs.argmax(axis=1), predictor.labels), probs, data


def evaluate(model_dir: str | os.PathLike[str], dataset_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str],
             metrics_path: str | os.PathLike[str], *, history_path: str | os.PathLike[str] | None = None,
             batch_size: int = 256) -> EvaluationResult:
    """Write evaluation.json, per_class.json, confusion_matrix.png, (history.png), report.md and the modality's
    extras to `output_dir`, and the headline metrics to `metrics_path`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = read_metadata(dataset_dir)
    modality = modality_of(meta)
    t0 = time.perf_counter()
    metrics, probs, data = _score(model_dir, dataset_dir, "test", batch_size)
    elapsed = time.perf_counter() - t0
    labels = list(meta["classes"])
    extras = modality.evaluation_extras(probs, data, labels)
    for name, value in extras.files.items():
        (out / name).write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    result = EvaluationResult(metrics=metrics, test_set_sha256=meta["splits"]["test"]["sha256"],
                              output_dir=str(out), report_path=str(out / "report.md"))
    metrics_file = Path(metrics_path)
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps({"test": result.summary}, indent=2) + "\n")
    (out / "per_class.json").write_text(json.dumps(metrics["per_class"], indent=2) + "\n")
    feedback = feedback_holdout(model_dir, meta, batch_size)
    (out / "evaluation.json").write_text(json.dumps({"test_set_sha256": result.test_set_sha256, **metrics,
                                                     **({"feedback_holdout": feedback} if feedback else {})},
                                                    indent=2) + "\n")
    plot_confusion_matrix(np.array(metrics["confusion_matrix"]), labels, out / "confusion_matrix.png",
                          title=f"{meta['name']} test: accuracy {metrics['accuracy']:.4f}")
    history = json.loads(Path(history_path).read_text()) if history_path and Path(history_path).is_file() else None
    if history:
        plot_history(history, out / "history.png")
    family = json.loads((Path(model_dir) / "model.json").read_text())["family"]
    (out / "report.md").write_text(render_report(meta["name"], family, modality.noun, metrics, history, elapsed,
                                                 extras.markdown))
    log.info("test accuracy %.4f, macro-F1 %.4f on %d %s", metrics["accuracy"], metrics["macro_f1"], metrics["count"],
             modality.noun)
    return result
