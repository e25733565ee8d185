"""The monitor flow: each served task's recent traffic against its champion's reference profile
(modelyard.monitoring), on the `monitor` deployment's schedule or from its Run button.

Per task it writes the report (markdown, JSON, a plot) under `<artifacts>/monitor/<task>/<UTC time>/`, adds a
point to the version's MLflow run in the `monitoring` experiment (drift scores over time, the report as
artifacts), publishes the report as a Prefect artifact, and on drift emits the Prefect event
`modelyard.drift.detected` with the task as its resource, for automations and deployment triggers to act on.
"""

import logging
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from modelyard.config import load_config
from modelyard.runtime import configure_environment

DRIFT_EVENT = "modelyard.drift.detected"


@flow(name="monitor", description=__doc__)
def monitor(tasks: list[str] | None = None, window_min: float = 60.0, min_requests: int = 50,
            alpha: float = 0.01) -> list[dict[str, Any]]:
    from prefect.events import emit_event

    from modelyard.monitoring.monitor import markdown, monitor_task, record
    from modelyard.registry import versions

    configure_environment()
    logging.getLogger("modelyard").setLevel(logging.INFO)
    logger = get_run_logger()
    cfg = load_config(os.environ.get("MODELYARD_PARAMS", "params.yaml"))  # the runner's, never a caller's
    uri = cfg.registry.resolved_tracking_uri()
    names = tasks or sorted(mv.name for mv in versions.with_alias(uri, cfg.registry.champion_alias))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results = []
    for task in names:
        out_dir = Path(cfg.paths.artifacts_dir) / "monitor" / task / stamp
        try:
            result = monitor_task(uri, task, cfg.traffic_dir, out_dir, champion_alias=cfg.registry.champion_alias,
                                  window_s=window_min * 60, min_rows=min_requests, alpha=alpha)
        except LookupError as err:  # no champion, or one registered before reference profiles: the others go on
            logger.warning("%s: not monitored: %s", task, err)
            results.append({"task": task, "status": "not_monitored", "drifted": False, "detail": str(err)})
            continue
        result["mlflow_run_id"] = record(uri, result, out_dir)
        result["report_dir"] = str(out_dir.resolve())
        create_markdown_artifact(markdown(result), key=f"drift-{task.lower()}",
                                 description=f"{task} v{result['version']}: {result['status']}")
        logger.info("%s v%s: %s (%d requests in the window%s)", task, result["version"], result["status"],
                    result["window_rows"], f", smallest p-value {result['score']:.2g}" if "score" in result else "")
        if result["drifted"]:
            event = emit_event(
                event=DRIFT_EVENT,
                resource={"prefect.resource.id": f"modelyard.task.{task}", "modelyard.task": task,
                          "modelyard.version": result["version"]},
                payload={k: result[k] for k in ("task", "version", "window_rows", "score", "mlflow_run_id",
                                                "report_dir")} | {"tests": result["tests"]})
            result["event_id"] = str(event.id) if event else None
            logger.warning("%s v%s drifted: emitted %s (%s)", task, result["version"], DRIFT_EVENT,
                           result["event_id"])
        results.append(result)
    return results
