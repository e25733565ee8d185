"""Register the `training-pipeline`, `hyperparameter-search`, `batch-predict` and `monitor` deployments with the Prefect server and serve their runs.

`make up` runs this in the background: the deployments then appear in the UI, the training form prefilled
with params.yaml's run, and their Run buttons execute the flows in this process's subprocesses.

`--pool NAME` (the cluster's control plane) registers the deployment with a work pool instead and exits:
runs then execute wherever a worker of that pool runs (`prefect worker start --pool NAME`), from this
checkout's code, which every node of the cluster has at the same path.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path

from modelyard.forms import form_defaults
from modelyard.monitoring.monitor import EVENTS
from modelyard.runtime import configure_environment, configure_logging
from pipelines.batch import batch_predict
from pipelines.monitor import monitor
from pipelines.search import hyperparameter_search
from pipelines.training import training_pipeline


def deployment_parameters(params_path: str = "params.yaml") -> dict:
    return form_defaults(params_path) | {"deploy": True}


DESCRIPTION = ("Train, evaluate, register and (when promoted) serve a model. Edit the form to change a run. Its "
               "trigger retrains a task on the monitor's events (drift, new labels, falling live accuracy).")
BATCH_DESCRIPTION = ("Predict a folder of images, a JSON-lines file or a Parquet file under the data root with a "
                     "task's champion; Parquet out under <artifacts>/predictions.")
SEARCH_DESCRIPTION = ("Search a recipe's hyper-parameters with Ray Tune (Optuna + ASHA), every trial an MLflow child "
                      "run; the winner is retrained, evaluated and registered as challenger through the gate.")
MONITOR_DESCRIPTION = ("Compare each served task's recent traffic with its champion's reference profile (KS, "
                       "chi-squared, MMD on embeddings) and its live accuracy on posted labels; report, MLflow point, "
                       "and an event (drift, labels ready, accuracy dropped) that starts a retraining run.")
MONITOR_EVERY = timedelta(minutes=15)
# The training deployment's trigger: a run for each monitor event, retraining the task the event names.
RETRAIN_PARAMETERS = {"cause": {"event": "{{ event.event }}", "event_id": "{{ event.id | string }}",
                                "task": "{{ event.resource['modelyard.task'] }}"}, "deploy": True}


def retrain_trigger():
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(name="retrain on monitor events", expect=set(EVENTS),
                                  match={"prefect.resource.id": "modelyard.task.*"}, parameters=RETRAIN_PARAMETERS)
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    configure_environment()
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", nargs="?", default="params.yaml")
    parser.add_argument("--pool", help="register with this work pool and exit, instead of serving the runs here")
    args = parser.parse_args()
    params_path = args.params
    os.environ["MODELYARD_PARAMS"] = params_path  # the flow runs in subprocesses, which read it
    if args.pool:
        deploy_to_pool(args.pool, params_path)
        return
    from prefect import serve

    serve(training_pipeline.to_deployment(name="training-pipeline", parameters=deployment_parameters(params_path),
                                          tags=["modelyard", "training"], description=DESCRIPTION,
                                          triggers=[retrain_trigger()]),
          hyperparameter_search.to_deployment(name="hyperparameter-search", tags=["modelyard", "search"],
                                              description=SEARCH_DESCRIPTION),
          batch_predict.to_deployment(name="batch-predict", tags=["modelyard", "inference"],
                                      description=BATCH_DESCRIPTION),
          monitor.to_deployment(name="monitor", tags=["modelyard", "monitoring"], description=MONITOR_DESCRIPTION,
                                interval=MONITOR_EVERY),
          pause_on_shutdown=False)


def deploy_to_pool(pool: str, params_path: str) -> None:
    """The deployment on work pool `pool`: its runs execute in this checkout, with this parameter file."""
    flow = training_pipeline.from_source(source=str(ROOT), entrypoint="pipelines/training.py:training_pipeline")
    job_variables = {"working_dir": str(ROOT), "env": {"MODELYARD_PARAMS": str(Path(params_path).resolve())}}
    flow.deploy(name="training-pipeline", work_pool_name=pool, parameters=deployment_parameters(params_path),
                tags=["modelyard", "training"], description=DESCRIPTION, build=False, push=False,
                job_variables=job_variables, triggers=[retrain_trigger()])
    search = hyperparameter_search.from_source(source=str(ROOT), entrypoint="pipelines/search.py:hyperparameter_search")
    search.deploy(name="hyperparameter-search", work_pool_name=pool, tags=["modelyard", "search"],
                  description=SEARCH_DESCRIPTION, build=False, push=False, job_variables=job_variables)
    batch = batch_predict.from_source(source=str(ROOT), entrypoint="pipelines/batch.py:batch_predict")
    batch.deploy(name="batch-predict", work_pool_name=pool, tags=["modelyard", "inference"],
                 description=BATCH_DESCRIPTION, build=False, push=False, job_variables=job_variables)
    watch = monitor.from_source(source=str(ROOT), entrypoint="pipelines/monitor.py:monitor")
    watch.deploy(name="monitor", work_pool_name=pool, tags=["modelyard", "monitoring"], description=MONITOR_DESCRIPTION,
                 interval=MONITOR_EVERY, build=False, push=False, job_variables=job_variables)


if __name__ == "__main__":
    main()
