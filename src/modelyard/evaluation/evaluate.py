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

from modelyard.data.dataset import TextSplit, load_split, read_metadata
from modelyard.evaluation.metrics import classification_metrics
from modelyard.evaluation.plots import plot_confusion_matrix, plot_history
from modelyard.inference import Predictor

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]
    test_set_sha256: str
    output_dir: str
    report_path: str

    @property
    def summary(self) -> dict[str, float]:
        """The headline numbers, as `metrics.json` holds them for DVC."""
        return {k: self.metrics[k] for k in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "count")}


def score_model_dir(model_dir: str | os.PathLike[str], dataset_dir: str | os.PathLike[str], split: str = "test") -> dict[str, Any]:
    """Metrics of the model in `model_dir` on one split."""
    return _score(model_dir, dataset_dir, split)[0]


def _score(model_dir: Any, dataset_dir: Any, split: str) -> tuple[dict[str, Any], np.ndarray, Any]:
    predictor = Predictor.from_dir(model_dir)
    data = load_split(dataset_dir, split)
    probs = predictor.predict_proba(data.texts if isinstance(data, TextSplit) else data.images)
    return classification_metrics(data.labels, probs.argmax(axis=1), predictor.labels), probs, data


def confident_mistakes(probs: np.ndarray, data: TextSplit, labels: list[str], count: int = 10) -> list[dict[str, Any]]:
    """The texts the model gets wrong with the highest confidence: where labels or the model are most off."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != data.labels)
    worst = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:count]
    return [{"index": int(i), "text": data.texts[i], "label": labels[int(data.labels[i])],
             "predicted": labels[int(predicted[i])], "confidence": round(float(probs[i, predicted[i]]), 4)}
            for i in worst]


def evaluate(
    model_dir: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    history_path: str | os.PathLike[str] | None = None,
    metrics_path: str | os.PathLike[str] | None = None,
) -> EvaluationResult:
    """Write evaluation.json, per_class.json, confusion_matrix.png, (history.png), report.md, and the
    headline metrics to `metrics_path` (default `<output_dir>/metrics.json`)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = read_metadata(dataset_dir)
    t0 = time.perf_counter()
    metrics, probs, data = _score(model_dir, dataset_dir, "test")
    elapsed = time.perf_counter() - t0
    labels = list(meta["classes"])
    mistakes = confident_mistakes(probs, data, labels) if isinstance(data, TextSplit) else None
    if mistakes is not None:
        (out / "mistakes.json").write_text(json.dumps(mistakes, indent=2, ensure_ascii=False) + "\n")
    result = EvaluationResult(metrics=metrics, test_set_sha256=meta["splits"]["test"]["sha256"],
                              output_dir=str(out), report_path=str(out / "report.md"))
    metrics_file = Path(metrics_path) if metrics_path else out / "metrics.json"
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps({"test": result.summary}, indent=2) + "\n")
    (out / "per_class.json").write_text(json.dumps(metrics["per_class"], indent=2) + "\n")
    (out / "evaluation.json").write_text(json.dumps({"test_set_sha256": result.test_set_sha256, **metrics}, indent=2) + "\n")
    plot_confusion_matrix(np.array(metrics["confusion_matrix"]), labels, out / "confusion_matrix.png",
                          title=f"{meta['name']} test: accuracy {metrics['accuracy']:.4f}")
    history = None
    if history_path and Path(history_path).is_file():
        history = json.loads(Path(history_path).read_text())
        plot_history(history, out / "history.png")
    (out / "report.md").write_text(render_report(meta["name"], model_dir, metrics, history, elapsed, mistakes))
    log.info("test accuracy %.4f, macro-F1 %.4f on %d %s", metrics["accuracy"], metrics["macro_f1"], metrics["count"],
             "texts" if mistakes is not None else "images")
    return result


def render_report(dataset: str, model_dir: Any, metrics: dict[str, Any], history: list[dict[str, float]] | None,
                  elapsed_s: float, mistakes: list[dict[str, Any]] | None = None) -> str:
    spec = json.loads((Path(model_dir) / "model.json").read_text())
    lines = [
        f"# Evaluation: `{spec['family']}` on `{dataset}` (test split)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy | **{metrics['accuracy']:.4f}** |",
        f"| macro-F1 | {metrics['macro_f1']:.4f} |",
        f"| macro precision | {metrics['macro_precision']:.4f} |",
        f"| macro recall | {metrics['macro_recall']:.4f} |",
        f"| test {'texts' if mistakes is not None else 'images'} | {metrics['count']} |",
        f"| scoring time | {elapsed_s:.1f} s |",
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for label, m in metrics["per_class"].items():
        lines.append(f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    cm = np.array(metrics["confusion_matrix"])
    off = cm.copy()
    np.fill_diagonal(off, 0)
    labels = list(metrics["per_class"])
    worst = np.dstack(np.unravel_index(np.argsort(off.ravel())[::-1][:3], off.shape))[0]
    lines += ["", "## Most confused", ""]
    lines += [f"- {labels[i]} taken for {labels[j]}: {off[i, j]} times" for i, j in worst if off[i, j] > 0]
    if mistakes:
        lines += ["", "## Most confidently wrong", "", "| text | label | predicted | confidence |", "|---|---|---|---|"]
        for m in mistakes:
            text = " ".join(m["text"].split())
            text = ((text[:197] + "…") if len(text) > 200 else text).replace("|", r"\|")
            lines.append(f"| {text} | {m['label']} | {m['predicted']} | {m['confidence']:.3f} |")
    if history:
        last = history[-1]
        lines += [
            "", "## Training", "",
            f"{len(history)} epochs; final train accuracy {last['train/accuracy']:.4f}, "
            f"val accuracy {last['val/accuracy']:.4f}, {last['train/samples_per_s']:.0f} samples/s.",
        ]
    return "\n".join(lines) + "\n"
