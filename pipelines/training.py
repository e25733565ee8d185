"""The training pipeline flow: fetch -> validate -> prepare -> train -> evaluate -> register -> publish
(-> deploy), in a run directory of its own (modelyard.runs), so that runs of the deployment may overlap.

Its parameters are a recipe and the config sections, so the Prefect UI shows a recipe select and a form per
section: the model family picked from a list, then that family's own fields with their help text; epochs,
batch size, learning rate, workers, mixed precision, ... Prefilled with params.yaml's run; no paths in it.
"""

# No `from __future__ import annotations`: Prefect validates run parameters against these annotations at
# runtime, and string annotations of the config models cannot be resolved there.
import logging
import os
from typing import Any, Literal

from prefect import flow

from modelyard.config import DataConfig, PrepareConfig, RegistryConfig, TrainConfig
from modelyard.forms import NO_RECIPE, config_from_form
from modelyard.models import config_union
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
) -> dict[str, Any]:
    configure_environment()
    logging.getLogger("modelyard").setLevel(logging.INFO)  # its progress lines go to the flow run's log
    sections = {"model": model, "train": train, "data": data, "prepare": prepare, "registry": registry}
    # The parameter file is the runner's (`make up` passes it), never a caller's.
    params_path = os.environ.get("MODELYARD_PARAMS", "params.yaml")
    cfg = config_from_form(params_path, recipe, sections)
    # In a directory of its own, so runs may overlap; its outputs go to the stable paths once it has registered
    # (and to params.yaml's DVC stages when it is the run params.yaml describes).
    with open_run(cfg, label=_flow_run_label(), params_path=params_path) as run:
        fetch_task(run.cfg)
        validate_task(run.cfg)
        prepare_task(run.cfg)
        trained = train_task(run.cfg)
        metrics = evaluate_task(run.cfg)
        registered = register_task(run.cfg)
        run_dir = publish_task(run)
    result = {"train": trained, "test": metrics, "registry": registered, "run_dir": run_dir}
    if deploy:  # serves the champion, whether or not this run's model became it
        result["serving"] = deploy_task(cfg)
    return result


def _flow_run_label() -> str | None:
    """The flow run's name (`prefect.runtime`), which the run directory's key ends with."""
    from prefect.runtime import flow_run

    return flow_run.name or None
