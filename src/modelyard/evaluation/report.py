"""The evaluation report, in markdown: what the Prefect artifact, MLflow and `artifacts/.../eval/report.md` show."""

from __future__ import annotations

from typing import Any

import numpy as np


def render_report(dataset: str, family: str, noun: str, metrics: dict[str, Any],
                  history: list[dict[str, float]] | None, elapsed_s: float, extras: str = "") -> str:
    lines = [
        f"# Evaluation: `{family}` on `{dataset}` (test split)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy | **{metrics['accuracy']:.4f}** |",
        f"| macro-F1 | {metrics['macro_f1']:.4f} |",
        f"| macro precision | {metrics['macro_precision']:.4f} |",
        f"| macro recall | {metrics['macro_recall']:.4f} |",
        f"| test {noun} | {metrics['count']} |",
        f"| scoring time | {elapsed_s:.1f} s |",
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
              for label, m in metrics["per_class"].items()]
    lines += ["", "## Most confused", "", *_most_confused(metrics)]
    if extras:
        lines += ["", extras.rstrip()]
    if history:
        last = history[-1]
        lines += ["", "## Training", "",
                  f"{len(history)} epochs; final train accuracy {last['train/accuracy']:.4f}, val accuracy "
                  f"{last['val/accuracy']:.4f}, {last['train/samples_per_s']:.0f} samples/s."]
    return "\n".join(lines) + "\n"


def _most_confused(metrics: dict[str, Any], count: int = 3) -> list[str]:
    off = np.array(metrics["confusion_matrix"])
    np.fill_diagonal(off, 0)
    labels = list(metrics["per_class"])
    worst = np.dstack(np.unravel_index(np.argsort(off.ravel())[::-1][:count], off.shape))[0]
    return [f"- {labels[i]} taken for {labels[j]}: {off[i, j]} times" for i, j in worst if off[i, j] > 0]
