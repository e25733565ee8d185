"""Register the `training-pipeline` deployment with the Prefect server and serve its runs.

`make up` runs this in the background: the deployment then appears in the UI, its form prefilled with
params.yaml's run, and its Run button executes the flow in this process's subprocesses.
"""

from __future__ import annotations

import os
import sys

from modelyard.forms import form_defaults
from modelyard.runtime import configure_environment, configure_logging
from pipelines.training import training_pipeline


def deployment_parameters(params_path: str = "params.yaml") -> dict:
    return form_defaults(params_path) | {"deploy": True}


def main() -> None:
    configure_environment()
    configure_logging()
    params_path = sys.argv[1] if len(sys.argv) > 1 else "params.yaml"
    os.environ["MODELYARD_PARAMS"] = params_path  # the flow runs in subprocesses, which read it
    training_pipeline.serve(
        name="training-pipeline",
        parameters=deployment_parameters(params_path),
        tags=["modelyard", "training"],
        description="Train, evaluate, register and (when promoted) serve a model. Edit the form to change a run.",
        pause_on_shutdown=False,
    )


if __name__ == "__main__":
    main()
