"""The batch-predict flow: a task's champion over a folder of images, a JSON-lines file or a Parquet file under
the runner's data root, predictions written as Parquet under its artifact root (modelyard.inference.batch).

Its paths are relative to those roots (`INPUT` under `paths.data_dir`, `OUTPUT` under
`<paths.artifacts_dir>/predictions`); one that leads outside them is refused, so a caller of the API cannot
make the runner read or write elsewhere.
"""

import logging
import os
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from modelyard.config import load_config
from modelyard.forms import path_inside
from modelyard.inference.batch import predict_batch
from modelyard.runtime import configure_environment


@flow(name="batch-predict", description=__doc__)
def batch_predict(task: str, input_path: str, output_path: str, version: str | None = None,
                  workers: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    configure_environment()
    logging.getLogger("modelyard").setLevel(logging.INFO)
    cfg = load_config(os.environ.get("MODELYARD_PARAMS", "params.yaml"))  # the runner's, never a caller's
    source = path_inside(input_path, cfg.paths.data_dir, "input_path", also=(cfg.paths.artifacts_dir,))
    output = path_inside(output_path, os.path.join(cfg.paths.artifacts_dir, "predictions"), "output_path")
    output.parent.mkdir(parents=True, exist_ok=True)
    summary = predict_batch(cfg.registry.resolved_tracking_uri(), task, source, output, version=version,
                            alias=cfg.registry.champion_alias, backend=cfg.serve.backend, workers=workers,
                            overwrite=overwrite)
    create_markdown_artifact(summary.to_markdown(), key="batch-predictions",
                             description=f"{task}: {input_path} -> {output_path}")
    return summary.to_dict()
