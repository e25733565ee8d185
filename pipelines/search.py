"""The hyper-parameter search flow: fetch -> validate -> prepare -> search (Ray Tune: Optuna's sampler, ASHA
stopping, one MLflow child run per trial) -> retrain the winner -> evaluate -> register as challenger -> the
promotion gate -> publish, in a run directory of its own (modelyard.runs).

The winner is retrained with its settings through the same Ray Train run as any training, rather than its
trial's weights registered: the registered model then has what every version has (checkpoints, TensorBoard,
the run's parameters, ONNX export and lineage), and a trial stopped by a time budget is never registered
half-trained. Its training run and version name the search run. The form: a recipe, a search space over the
family's own (see `modelyard families`), and the search's settings.
"""

# No `from __future__ import annotations`: Prefect validates run parameters against these annotations.
import logging
import os
from typing import Any, Literal

from prefect import flow

from modelyard import stages
from modelyard.config import DataConfig, TrainConfig
from modelyard.forms import NO_RECIPE, config_from_form
from modelyard.recipes import RECIPE_NAMES
from modelyard.runs import open_run
from modelyard.runtime import configure_environment
from modelyard.tuning.config import SearchConfig
from modelyard.tuning.space import resolve_space
from tasks.stages import (
    evaluate_task,
    fetch_task,
    prepare_task,
    publish_task,
    register_task,
    search_task,
    train_task,
    validate_task,
)

RecipeChoice = Literal[(NO_RECIPE, *RECIPE_NAMES)]  # type: ignore[valid-type]


@flow(name="hyperparameter-search", description=__doc__)
def hyperparameter_search(
    recipe: RecipeChoice = NO_RECIPE,
    space: dict[str, Any] | None = None,
    search: SearchConfig | None = None,
    train: TrainConfig | None = None,
    data: DataConfig | None = None,
    register_winner: bool = True,
) -> dict[str, Any]:
    """`space`: settings to search, merged over the family's (`{"train.learning_rate": {"loguniform": [0.01,
    0.3]}}`; null drops one); `register_winner`: retrain, evaluate and register the winner through the gate."""
    configure_environment()
    logging.getLogger("modelyard").setLevel(logging.INFO)
    params_path = os.environ.get("MODELYARD_PARAMS", "params.yaml")  # the runner's, never a caller's
    cfg = config_from_form(params_path, recipe, {"train": train, "data": data})
    resolve_space(cfg, space)  # a bad space fails the run here, before anything runs
    with open_run(cfg, label=_flow_run_label(), params_path=params_path) as run:
        fetch_task(run.cfg)
        validate_task(run.cfg)
        prepare_task(run.cfg)
        result = search_task(run.cfg, search or SearchConfig(), space)
        summary: dict[str, Any] = {"search": result.summary()}
        if not register_winner:
            return summary
        winner, tags = stages.winner_config(run.cfg, result)
        prepare_task(winner)  # its augmentation settings may differ from the searched config's
        summary["train"] = train_task(winner, tags)
        summary["test"] = evaluate_task(winner)
        summary["registry"] = register_task(winner)
        summary["run_dir"] = publish_task(run)
    return summary


def _flow_run_label() -> str | None:
    from prefect.runtime import flow_run

    return flow_run.name or None
