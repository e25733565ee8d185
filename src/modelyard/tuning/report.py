"""A search's report: the trials ranked, the best configuration, which settings mattered, and two plots (the
score over the two settings that mattered most; every trial's learning curve).

Which settings mattered is the absolute Spearman rank correlation between each setting (choices by their
position in the list) and the trials' scores at the deepest epoch every scored trial reached: a rough,
assumption-free measure that needs no extra package, and says so in the report.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from modelyard.config import PipelineConfig
from modelyard.tuning.space import describe
from modelyard.tuning.trial import METRIC


def importance(result: Any) -> dict[str, float]:
    """|Spearman ρ| of each searched setting with the score at the epoch every scored trial reached."""
    import numpy as np

    scored = [t for t in result.trials if t.history]
    if len(scored) < 3:
        return {}
    depth = min(t.epochs_run for t in scored)
    scores = np.array([t.history[depth - 1][METRIC] for t in scored])
    out = {}
    for key, dist in result.space.items():
        values = np.array([_numeric(t.sample.get(key), dist) for t in scored], dtype=float)
        if np.isnan(values).any() or values.std() == 0 or scores.std() == 0:
            out[key] = 0.0
            continue
        rho = np.corrcoef(_ranks(values), _ranks(scores))[0, 1]
        out[key] = round(float(abs(rho)), 3)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _numeric(value: Any, dist: dict[str, Any]) -> float:
    kind, args = next(iter(dist.items()))
    if kind == "choice":
        return float(args.index(value)) if value in args else math.nan
    return float(value) if value is not None else math.nan


def _ranks(x: Any) -> Any:
    import numpy as np

    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for v in np.unique(x):  # ties share their mean rank
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def write_report(result: Any, cfg: PipelineConfig) -> Path:
    """Write `<out_dir>/report/` (report.md, trials.csv, best.json, scores.png, curves.png); fills the
    result's `importance` and `report_md`."""
    out = Path(result.out_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    result.importance = importance(result)
    _trials_csv(result, out / "trials.csv")
    (out / "best.json").write_text(json.dumps({"trial": result.best.trial_id, "val_accuracy": result.best.score,
                                               "settings": result.best.sample}, indent=2) + "\n")
    plots = [p for p in (_score_plot(result, out / "scores.png"), _curves_plot(result, out / "curves.png")) if p]
    result.report_md = _markdown(result, cfg, plots)
    (out / "report.md").write_text(result.report_md)
    return out


def _trials_csv(result: Any, path: Path) -> None:
    keys = list(result.space)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "trial", "status", METRIC, "epochs_run", "epochs_planned", "seconds", *keys, "reason"])
        for i, t in enumerate(result.trials, 1):
            writer.writerow([i, t.trial_id, t.status, f"{t.score:.4f}", t.epochs_run, t.epochs_planned, t.seconds,
                             *[t.sample.get(k) for k in keys], t.reason])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e3 else f"{v:.4g}"
    return str(v)


def _markdown(result: Any, cfg: PipelineConfig, plots: list[str]) -> str:
    best = result.best
    keys = list(result.space)
    lines = [
        f"# Hyper-parameter search: {result.task}",
        "",
        f"{len(result.trials)} trials of `{cfg.model.name}` on `{cfg.data.dataset}`"
        + (f" (recipe `{cfg.recipe}`)" if cfg.recipe else "")
        + f" in {result.wall_s / 60:.1f} min, {result.concurrency} at once, {result.engine} engine; scheduler "
          f"{result.settings['scheduler']}: **{result.stopped_early} stopped early**. Optuna's TPE sampler, seed "
          f"{result.settings['seed']}; score: `{METRIC}` at a trial's last epoch.",
        "",
        f"**Best: trial {best.trial_id}**, {METRIC} **{best.score:.4f}** after {best.epochs_run} epochs:",
        "",
        "```json",
        json.dumps(best.sample, indent=2, default=str),
        "```",
        "",
        "## Search space",
        "",
        *[f"- `{line}`" for line in describe(result.space)],
        "",
        "## Trials, best first",
        "",
        "| # | trial | status | " + METRIC + " | epochs | s | " + " | ".join(f"`{k}`" for k in keys) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(keys),
    ]
    for i, t in enumerate(result.trials, 1):
        lines.append(f"| {i} | {t.trial_id} | {t.status} | {t.score:.4f} | {t.epochs_run}/{t.epochs_planned} | "
                     f"{t.seconds:.0f} | " + " | ".join(_fmt(t.sample.get(k)) for k in keys) + " |")
    lines += ["", "Why each trial ended:", "", *[f"- {t.trial_id}: {t.reason}" for t in result.trials], ""]
    if result.importance:
        lines += ["## Which settings mattered", "",
                  "|Spearman ρ| between each setting and the score at the epoch every scored trial reached "
                  "(a rough measure over few trials):", "",
                  *[f"- `{k}`: {v:.2f}" for k, v in result.importance.items()], ""]
    for name in plots:
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def _score_plot(result: Any, path: Path) -> str | None:
    """The score over the two settings that mattered most (one when only one was searched)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [t for t in result.trials if t.history]
    keys = list(result.importance or result.space)[:2]
    if not scored or not keys:
        return None
    depth = min(t.epochs_run for t in scored)
    scores = [t.history[depth - 1][METRIC] for t in scored]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    x = [_numeric(t.sample.get(keys[0]), result.space[keys[0]]) for t in scored]
    if len(keys) == 2:
        y = [_numeric(t.sample.get(keys[1]), result.space[keys[1]]) for t in scored]
        # The colour scale spans the middle of the scores: one diverged trial would flatten the rest into one colour.
        low = float(np.percentile(scores, 10)) if len(scores) >= 5 else min(scores)
        points = ax.scatter(x, y, c=scores, cmap="viridis", s=70, edgecolors="black", vmin=low, vmax=max(scores))
        fig.colorbar(points, ax=ax, label=f"{METRIC} at epoch {depth}")
        ax.set_ylabel(keys[1])
        _scale(ax.set_yscale, result.space[keys[1]], ax.set_yticks, ax.set_yticklabels)
        best = result.best
        ax.scatter([_numeric(best.sample.get(keys[0]), result.space[keys[0]])],
                   [_numeric(best.sample.get(keys[1]), result.space[keys[1]])], marker="*", s=300, c="red",
                   label=f"best ({best.trial_id})")
        ax.legend(loc="best")
    else:
        ax.scatter(x, scores, s=60)
        ax.set_ylabel(f"{METRIC} at epoch {depth}")
    ax.set_xlabel(keys[0])
    _scale(ax.set_xscale, result.space[keys[0]], ax.set_xticks, ax.set_xticklabels)
    ax.set_title(f"{result.task}: score by the settings that mattered most", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def _scale(set_scale: Any, dist: dict[str, Any], set_ticks: Any, set_labels: Any) -> None:
    kind, args = next(iter(dist.items()))
    if kind == "loguniform":
        set_scale("log")
    elif kind == "choice":
        set_ticks(range(len(args)))
        set_labels([str(a) for a in args])


def _curves_plot(result: Any, path: Path) -> str | None:
    """Every trial's validation accuracy by epoch; stopped trials dashed, the best in red."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(t.history for t in result.trials):
        return None
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=100)
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3]  # red is the best's
    for i, t in enumerate(result.trials):
        if not t.history:
            continue
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(t.history)]
        acc = [h[METRIC] for h in t.history]
        best = t is result.best
        ax.plot(epochs, acc, color="red" if best else palette[i % len(palette)], linewidth=2.5 if best else 1.0,
                linestyle="-" if t.status == "completed" else "--", marker="o" if len(acc) < 3 else None,
                label=f"best ({t.trial_id})" if best else None, alpha=1.0 if best else 0.7)
    values = [h[METRIC] for t in result.trials for h in t.history]
    if len(values) >= 10:  # the bulk of the curves, not one diverged trial's floor
        ax.set_ylim(bottom=max(0.0, float(np.percentile(values, 5)) - 0.02))
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC)
    ax.set_title(f"{result.task}: learning curves (dashed: stopped early)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name
