"""The training pipeline flow: fetch -> validate -> prepare -> train -> evaluate -> register -> publish
(-> deploy), in a run directory of its own (modelyard.runs), so that runs of the deployment may overlap.

Its parameters are a recipe and the config sections, so the Prefect UI shows a recipe select and a form per
section: the model family picked from a list, then that family's own fields with their help text; epochs,
batch size, learning rate, workers, mixed precision, ... Prefilled with params.yaml's run; no paths in it.

`cause` is set by the deployment's trigger on the monitor's events ({"event", "event_id", "task"}): the run
then retrains that task (modelyard.monitoring.retraining) with its newest feedback set in the training split,
unless it was decided on within the cool-down, and records the gate's decision with the event.
"""

# No `from __future__ import annotations`: Prefect validates run parameters against these annotations at
# runtime, and string annotations of the config models cannot be resolved there.
import json
import logging
import os
from typing import Any, Literal

from prefect import flow, get_run_logger

from modelyard.config import DataConfig, PrepareConfig, RegistryConfig, TrainConfig
from modelyard.forms import NO_RECIPE, config_from_form
from modelyard.models import config_union
from modelyard.monitoring.retraining import Cause
from modelyard.paths import TaskPaths
from modelyard.recipes import RECIPE_NAMES
from modelyard.runs import open_run
from modelyard.runtime import configure_environment
from tasks.stages import (
    deploy_task,
    evaluate_task,
    fetch_task,
    prepare_task,
    publish_task,
    register_task,
    train_task,
    validate_task,
)

RecipeChoice = Literal[(NO_RECIPE, *RECIPE_NAMES)]  # type: ignore[valid-type]
ModelChoice = config_union()  # every family's config, picked by `name`


@flow(name="training-pipeline", description=__doc__)
def training_pipeline(
    recipe: RecipeChoice = NO_RECIPE,
    model: ModelChoice | None = None,
    train: TrainConfig | None = None,
    data: DataConfig | None = None,
    prepare: PrepareConfig | None = None,
    registry: RegistryConfig | None = None,
    deploy: bool = False,
    cause: Cause | None = None,
) -> dict[str, Any]:
    configure_environment()
    logging.getLogger("modelyard").setLevel(logging.INFO)  # its progress lines go to the flow run's log
    sections = {"model": model, "train": train, "data": data, "prepare": prepare, "registry": registry}
    # The parameter file is the runner's (`make up` passes it), never a caller's.
    params_path = os.environ.get("MODELYARD_PARAMS", "params.yaml")
    cfg = config_from_form(params_path, recipe, sections)
    if cause is not None:
        return _retrain(cfg, cause, params_path, deploy)
    result = _pipeline(cfg, params_path)
    if deploy:  # serves the champion, whether or not this run's model became it
        result["serving"] = deploy_task(cfg)
    return result


def _pipeline(cfg, params_path: str, tags: dict[str, str] | None = None) -> dict[str, Any]:
    # In a directory of its own, so runs may overlap; its outputs go to the stable paths once it has registered
    # (and to params.yaml's DVC stages when it is the run params.yaml describes).
    with open_run(cfg, label=_flow_run_label(), params_path=params_path) as run:
        fetch_task(run.cfg)
        validate_task(run.cfg)
        prepare_task(run.cfg)
        trained = train_task(run.cfg, tags=tags)
        metrics = evaluate_task(run.cfg)
        registered = register_task(run.cfg)
        run_dir = publish_task(run)
        evaluation = json.loads((TaskPaths.of(run.cfg).eval_dir / "evaluation.json").read_text())
    return {"train": trained, "test": metrics, "registry": registered, "run_dir": run_dir, "evaluation": evaluation}


def _retrain(cfg, why: Cause, params_path: str, deploy: bool) -> dict[str, Any]:
    """A run the trigger started: the task the event names, retrained with its newest feedback set unless it
    is cooling down, through the same gate (and, with `deploy`, the same canary); the decision recorded."""
    from modelyard.monitoring import retraining as retrain

    cfg = retrain.task_config(cfg, why.task)
    run_id = retrain.begin(cfg, why)  # first: two retrainings begun at once see each other
    cooling = retrain.cooling_down(cfg, why.task, run_id)
    if cooling:
        decision = retrain.Decision(why.task, "skipped", cooling, why.event, why.event_id)
        return {"retraining": _recorded(cfg, run_id, decision, None)}
    try:
        cfg, feedback = retrain.with_feedback(cfg, why.task)
        result = _pipeline(cfg, params_path, tags=why.tags())
        decision = retrain.decision_of(why, result["registry"], result["evaluation"], result["train"]["run_id"],
                                       feedback)
        result["retraining"] = _recorded(cfg, run_id, decision, feedback)
    except BaseException as exc:  # the run no longer holds the cool-down: the next event may try again
        retrain.failed(cfg, run_id, exc)
        raise
    if deploy:  # the champion, and the challenger a refused version became, for the canary's share
        result["serving"] = deploy_task(cfg)
    return result


def _recorded(cfg, run_id: str, decision, feedback) -> dict[str, Any]:
    """The retraining decision on its MLflow run, as the Prefect artifact `retrain-<task>` and as the event
    `modelyard.retrain.decided`, related to the event that caused it."""
    from dataclasses import asdict

    from prefect.artifacts import create_markdown_artifact
    from prefect.events import emit_event

    from modelyard.monitoring import retraining as retrain

    retrain.record(cfg, run_id, decision, feedback)
    create_markdown_artifact(decision.markdown(), key=f"retrain-{decision.task.lower()}",
                             description=f"{decision.task}: {decision.decision}")
    emit_event(event=retrain.DECIDED_EVENT,
               resource={"prefect.resource.id": f"modelyard.task.{decision.task}", "modelyard.task": decision.task,
                         "modelyard.decision": decision.decision},
               related=[{"prefect.resource.id": f"prefect.event.{decision.event_id}",
                         "prefect.resource.role": "cause", "prefect.resource.name": decision.event}],
               payload=asdict(decision) | {"mlflow_run_id": run_id})
    get_run_logger().warning("retraining of %s asked for by %s: %s (%s)", decision.task, decision.event,
                             decision.decision, decision.reason)
    return asdict(decision) | {"mlflow_run_id": run_id, "feedback": feedback}


def _flow_run_label() -> str | None:
    """The flow run's name (`prefect.runtime`), which the run directory's key ends with."""
    from prefect.runtime import flow_run

    return flow_run.name or None
