"""The training pipeline flow: fetch -> validate -> augment -> train -> evaluate -> register -> publish
(-> deploy), in a run directory of its own (modelyard.runs), so that runs of the deployment may overlap.

Its parameters are a recipe name and the config sections, so the Prefect UI shows a recipe picker and a form
per section (the model family's own fields, epochs, batch size, learning rate, workers, mixed precision, ...).
A recipe is applied over params.yaml; sections left empty come from them.
"""

# No `from __future__ import annotations`: Prefect validates run parameters against these annotations at
# runtime, and string annotations of the config models cannot be resolved there.
import logging
from typing import Any, Literal

from prefect import flow

from modelyard.config import (
    AugmentConfig,
    DataConfig,
    ModelConfig,
    RegistryConfig,
    TrainConfig,
    changed_from_params,
    load_config,
)
from modelyard.recipes import RECIPE_NAMES
from modelyard.runs import open_run
from modelyard.runtime import configure_environment
from tasks.stages import (
    augment_task,
    deploy_task,
    evaluate_task,
    fetch_task,
    publish_task,
    register_task,
    train_task,
    validate_task,
)


@flow(name="training-pipeline", description=__doc__)
def training_pipeline(
    recipe: Literal[RECIPE_NAMES] | None = None,  # type: ignore[valid-type]
    model: ModelConfig | None = None,
    train: TrainConfig | None = None,
    data: DataConfig | None = None,
    augment: AugmentConfig | None = None,
    registry: RegistryConfig | None = None,
    deploy: bool = False,
    params_path: str = "params.yaml",
) -> dict[str, Any]:
    configure_environment()
    logging.getLogger("modelyard").setLevel(logging.INFO)  # its progress lines go to the flow run's log
    sections = {"model": model, "train": train, "data": data, "augment": augment, "registry": registry}
    cfg = load_config(params_path, {"recipe": recipe}).with_overrides(changed_from_params(sections, params_path))
    # In a directory of its own, so runs may overlap; its outputs go to the stable paths once it has registered.
    with open_run(cfg, label=_flow_run_label()) as run:
        fetch_task(run.cfg)
        validate_task(run.cfg)
        augment_task(run.cfg)
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
