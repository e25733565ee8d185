"""The monitor flow: each served task's recent traffic against its champion's reference profile, and its
live accuracy where labels came back (modelyard.monitoring), on the `monitor` deployment's schedule or from its
Run button.

Per task it writes the report (markdown, JSON, a plot) under `<artifacts>/monitor/<task>/<UTC time>/`, adds a
point to the version's MLflow run in the `monitoring` experiment (drift scores and live accuracy over time,
the report as artifacts), publishes the report as a Prefect artifact, and when the task should be retrained
(drift, enough new labels, or a live accuracy under its test accuracy: params.yaml's `monitor.retrain`) emits
one Prefect event with the task as its resource: `modelyard.drift.detected`, `modelyard.feedback.ready` or
`modelyard.accuracy.dropped` (the first reason; the payload lists them all). The training deployment's trigger
starts a retraining run on each.
"""

import logging
import os
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from modelyard.config import load_config
from modelyard.monitoring.monitor import DRIFT_EVENT  # noqa: F401 (the name tests and docs import from here)
from modelyard.runtime import configure_environment


@flow(name="monitor", description=__doc__)
def monitor(tasks: list[str] | None = None, window_min: float | None = None, min_requests: int | None = None,
            alpha: float | None = None) -> list[dict[str, Any]]:
    """Parameters left empty take params.yaml's `monitor` section."""
    from prefect.events import emit_event

    from modelyard.monitoring.monitor import markdown, monitor_all

    configure_environment()
    logging.getLogger("modelyard").setLevel(logging.INFO)
    logger = get_run_logger()
    cfg = load_config(os.environ.get("MODELYARD_PARAMS", "params.yaml"))  # the runner's, never a caller's
    results = monitor_all(cfg, tasks, window_s=window_min * 60 if window_min else None, min_rows=min_requests,
                          alpha=alpha)
    for result in results:
        task = result["task"]
        if result["status"] == "not_monitored":
            logger.warning("%s: not monitored: %s", task, result["detail"])
            continue
        create_markdown_artifact(markdown(result), key=f"drift-{task.lower()}",
                                 description=f"{task} v{result['version']}: {result['status']}")
        logger.info("%s v%s: %s (%d requests in the window%s)", task, result["version"], result["status"],
                    result["window_rows"], f", smallest p-value {result['score']:.2g}" if "score" in result else "")
        if result["reasons"]:
            event = emit_event(
                event=result["reasons"][0],
                resource={"prefect.resource.id": f"modelyard.task.{task}", "modelyard.task": task,
                          "modelyard.version": result["version"]},
                payload={k: result.get(k) for k in ("task", "version", "status", "window_rows", "score", "reasons",
                                                    "live", "new_labels", "mlflow_run_id", "report_dir")}
                | {"tests": result.get("tests", [])})
            result["event_id"] = str(event.id) if event else None
            logger.warning("%s v%s: emitted %s (%s)", task, result["version"], result["reasons"][0],
                           result["event_id"])
    return results
