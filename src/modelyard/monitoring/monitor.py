"""One monitor run for a task: the served version's recent traffic against its reference profile.

    result = monitor_task(tracking_uri, "fashion-mnist-cnn", "artifacts/traffic", out_dir, window_s=3600)

Reads the window from the traffic log, the reference from the version's registered artifacts, runs
`drift.compare`, and writes `report.json`, `report.md` and `drift.png` (the distributions side by side) to
`out_dir`. With too little traffic in the window it says so and tests nothing. Where callers posted labels
(modelyard.monitoring.feedback) it adds the live accuracy per version served in the window, and counts the
labels posted since the version was registered. `reasons` lists what asks for a retraining run, by the
name of the event the monitor flow emits for it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from modelyard.config import RetrainConfig
from modelyard.monitoring import drift, feedback, profile

DRIFT_EVENT = "modelyard.drift.detected"
LABELS_EVENT = "modelyard.feedback.ready"
ACCURACY_EVENT = "modelyard.accuracy.dropped"
EVENTS = (DRIFT_EVENT, LABELS_EVENT, ACCURACY_EVENT)


def monitor_task(tracking_uri: str, task: str, traffic_dir: str | Path, out_dir: str | Path, *,
                 version: str | None = None, champion_alias: str = "champion", window_s: float = 3600.0,
                 since: float | None = None, min_rows: int = 50, alpha: float = 0.01,
                 retrain: RetrainConfig | None = None) -> dict[str, Any]:
    """The drift of `task`'s served `version` (its champion's when None) over the last `window_s` seconds (or
    since the UTC time `since`), its live accuracy, and the reasons to retrain it (`retrain`'s thresholds)."""
    import pandas as pd

    from modelyard.registry import versions

    found = versions.get_version(tracking_uri, task, version=version) if version else versions.get_version(
        tracking_uri, task, alias=champion_alias)
    if found is None:
        raise LookupError(f"no {'version ' + version if version else champion_alias + ' version'} of {task!r}")
    version = str(found.version)
    with versions.fetched_model_dir(tracking_uri, task, version=version) as (model_dir, _):
        reference_path = model_dir / profile.REFERENCE_FILE
        if not reference_path.exists():
            raise LookupError(f"{task} v{version} was registered without a reference profile "
                              f"({profile.REFERENCE_FILE}); register a new version to monitor it")
        reference = pd.read_parquet(reference_path)
    now = time.time()
    since = now - window_s if since is None else since
    window = profile.read_traffic(traffic_dir, task, version, since=since)
    result: dict[str, Any] = {"task": task, "version": version, "window_s": round(now - since, 3),
                              "window_rows": len(window), "reference_rows": len(reference), "at": now}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(window) < min_rows:
        result |= {"status": "too_little_traffic", "drifted": False,
                   "detail": f"{len(window)} requests in the window; at least {min_rows} are needed"}
    else:
        report = drift.compare(reference, window, alpha=alpha)
        result |= {"status": "drift" if report.drifted else "ok", **report.to_dict()}
        plot(reference, window, report, out_dir / "drift.png", title=f"{task} v{version}")
    result |= _labels(tracking_uri, traffic_dir, task, since, found.created, found.tags)
    result["reasons"] = reasons(result, retrain or RetrainConfig())
    (out_dir / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(result))
    return result


def monitor_all(cfg: Any, tasks: list[str] | None = None, *, window_s: float | None = None,
                min_rows: int | None = None, alpha: float | None = None) -> list[dict[str, Any]]:
    """A monitor run of every task with a champion (or of `tasks`), by `cfg`'s `monitor` section unless given:
    each result recorded in MLflow with its report under `<artifacts>/monitor/<task>/<UTC time>/`. A task that
    cannot be monitored (no champion, no reference profile) gets status `not_monitored`; the others go on."""
    from modelyard.registry import versions

    uri, m = cfg.registry.resolved_tracking_uri(), cfg.monitor
    names = tasks or sorted(mv.name for mv in versions.with_alias(uri, cfg.registry.champion_alias))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results = []
    for task in names:
        out_dir = Path(cfg.paths.artifacts_dir) / "monitor" / task / stamp
        try:
            result = monitor_task(uri, task, cfg.traffic_dir, out_dir, champion_alias=cfg.registry.champion_alias,
                                  window_s=window_s or m.window_min * 60, min_rows=min_rows or m.min_requests,
                                  alpha=alpha or m.alpha, retrain=m.retrain)
        except LookupError as err:
            results.append({"task": task, "status": "not_monitored", "drifted": False, "reasons": [],
                            "detail": str(err)})
            continue
        result["mlflow_run_id"] = record(uri, result, out_dir)
        result["report_dir"] = str(out_dir.resolve())
        results.append(result)
    return results


def _labels(tracking_uri: str, traffic_dir: str | Path, task: str, since: float, registered_at: float,
            tags: dict[str, str]) -> dict[str, Any]:
    """Live accuracy per version over the labels posted in the window, and the labels (of inputs the log
    holds) posted since the version was registered or the task last retrained, whichever is later."""
    from modelyard.monitoring.retraining import last_retrained

    window = feedback.labelled(traffic_dir, task, since=since)
    count_from = max(registered_at, last_retrained(tracking_uri, task) or 0.0)
    test_accuracy = tags.get("test.accuracy")
    return {"live": feedback.live_accuracy(window),
            "new_labels": len(feedback.labelled(traffic_dir, task, since=count_from)),
            "test_accuracy": float(test_accuracy) if test_accuracy is not None else None}


def reasons(result: dict[str, Any], retrain: RetrainConfig) -> list[str]:
    """The events a monitor result calls for (EVENTS), by `retrain`'s thresholds."""
    out = []
    if result.get("drifted") and retrain.on_drift:
        out.append(DRIFT_EVENT)
    if result.get("new_labels", 0) >= retrain.min_new_labels:
        out.append(LABELS_EVENT)
    live, test = result.get("live", {}).get(result["version"]), result.get("test_accuracy")
    if live and test is not None and live["labelled"] >= retrain.min_labelled \
            and live["accuracy"] < test - retrain.accuracy_drop:
        out.append(ACCURACY_EVENT)
    return out


MONITOR_EXPERIMENT = "monitoring"
MONITOR_TAG = "modelyard.monitor"


def record(tracking_uri: str, result: dict[str, Any], out_dir: str | Path) -> str:
    """Add this monitor run to its task version's MLflow run (one per version, a point per monitor run: drift
    scores over time) with the report as artifacts under `reports/<time>/`; returns the run id."""
    from modelyard.registry import tracking

    task, version = result["task"], result["version"]
    run_id = tracking.series_run(tracking_uri, MONITOR_EXPERIMENT, MONITOR_TAG, f"{task}:{version}",
                                 run_name=f"monitor {task} v{version}")
    step = max(tracking.logged_steps(tracking_uri, run_id, "monitor/window_rows"), default=-1) + 1
    metrics = {"monitor/window_rows": result["window_rows"], "monitor/drifted": float(bool(result["drifted"]))}
    if result.get("tests"):
        metrics["monitor/score"] = result["score"]
        metrics |= {f"monitor/{t['name']}/p_value": t["p_value"] for t in result["tests"]}
        metrics |= {f"monitor/{t['name']}/statistic": t["statistic"] for t in result["tests"]}
    live = result.get("live", {}).get(version)
    if live:
        metrics |= {"monitor/live_accuracy": live["accuracy"], "monitor/labelled": live["labelled"]}
    tracking.log_metrics(tracking_uri, run_id, metrics, step=step)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(result["at"]))
    tracking.log_artifacts(tracking_uri, run_id, out_dir, f"reports/{stamp}")
    return run_id


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Drift of {result['task']} v{result['version']}", "",
             f"**{result['status']}**: {result['window_rows']} requests in the last {result['window_s'] / 60:g} min "
             f"against {result['reference_rows']} reference rows (the test split).", ""]
    if result.get("tests"):
        lines += ["| test | statistic | p-value | drifted | detail |", "|---|---|---|---|---|"]
        lines += [f"| {t['name']} | {t['statistic']:.4g} | {t['p_value']:.3g} | {'yes' if t['drifted'] else 'no'} | "
                  f"{t['detail']} |" for t in result["tests"]]
        lines += ["", f"Drift when a p-value is below {result['alpha']:g} / {len(result['tests'])} (Bonferroni; "
                  "the tests take rows as independent, which traffic is not quite).",
                  "", "![drift](drift.png)"]
    elif result.get("detail"):
        lines.append(result["detail"])
    if result.get("live"):
        test = result.get("test_accuracy")
        lines += ["", "| version | live accuracy | labelled requests |", "|---|---|---|"]
        lines += [f"| {v} | {m['accuracy']:.4f} | {m['labelled']} |" for v, m in sorted(result["live"].items())]
        lines += ["", f"Test accuracy of v{result['version']}: {test:.4f}." if test is not None else ""]
    lines += ["", f"{result.get('new_labels', 0)} labels of logged requests posted since v{result['version']} was "
                  "registered (or the task last retrained)."]
    if result.get("reasons"):
        lines += ["", "Retraining asked for: " + ", ".join(f"`{r}`" for r in result["reasons"]) + "."]
    return "\n".join(lines) + "\n"


def plot(reference: Any, window: Any, report: drift.DriftReport, path: Path, title: str) -> Path:
    """Top-score histograms, predicted-class shares and the embeddings' first two principal components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    p = {t.name: t.p_value for t in report.tests}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    bins = np.linspace(0, 1, 26)
    axes[0].hist(reference["confidence"], bins=bins, alpha=0.6, density=True, label="reference (test split)")
    axes[0].hist(window["confidence"], bins=bins, alpha=0.6, density=True, label="served traffic")
    axes[0].set(title=f"top score (KS p={p.get('confidence', float('nan')):.2g})", xlabel="confidence")
    axes[0].legend()
    classes = int(max(reference["predicted"].max(), window["predicted"].max())) + 1
    x = np.arange(classes)
    axes[1].bar(x - 0.2, np.bincount(reference["predicted"], minlength=classes) / len(reference), 0.4,
                label="reference")
    axes[1].bar(x + 0.2, np.bincount(window["predicted"], minlength=classes) / len(window), 0.4, label="traffic")
    axes[1].set(title=f"predicted class (chi2 p={p.get('predicted_class', float('nan')):.2g})", xlabel="class index",
                ylabel="share")
    ref_emb, win_emb = drift._embeddings(reference), drift._embeddings(window)
    if ref_emb is not None and win_emb is not None:
        mean = ref_emb.mean(axis=0)
        _, _, components = np.linalg.svd(ref_emb - mean, full_matrices=False)
        for data, name in ((ref_emb[:1000], "reference"), (win_emb[:1000], "traffic")):
            xy = (data - mean) @ components[:2].T
            axes[2].scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.4, label=name)
        axes[2].set(title=f"embedding, 2 principal components (MMD p={p.get('embedding', float('nan')):.2g})")
        axes[2].legend()
    fig.suptitle(f"{title}: {'DRIFT' if report.drifted else 'no drift'}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
