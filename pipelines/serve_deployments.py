"""Register the `training-pipeline` deployment with the Prefect server and serve its runs.

`make up` runs this in the background: the deployment then appears in the UI, prefilled with
params.yaml's values, and its Run button executes the flow in this process's subprocesses.
"""

from __future__ import annotations

import sys

from modelyard.config import load_config
from modelyard.runtime import configure_environment, configure_logging
from pipelines.training import training_pipeline


def deployment_parameters(params_path: str = "params.yaml") -> dict:
    cfg = load_config(params_path)
    dump = cfg.model_dump(mode="json", by_alias=True)
    return {key: dump[key] for key in ("model", "train", "data", "augment", "registry")} | {
        "deploy": True, "params_path": params_path,
    }


def main() -> None:
    configure_environment()
    configure_logging()
    params_path = sys.argv[1] if len(sys.argv) > 1 else "params.yaml"
    training_pipeline.serve(
        name="training-pipeline",
        parameters=deployment_parameters(params_path),
        tags=["modelyard", "training"],
        description="Train, evaluate, register and (when promoted) serve a model. Edit the form to change a run.",
        pause_on_shutdown=False,
    )


if __name__ == "__main__":
    main()
