"""A pipeline run's data stages in a process of its own, for tests of runs that overlap."""

from __future__ import annotations

import json
from typing import Any


def data_stages_then_publish(cfg_json: str, label: str, barrier: Any) -> str:
    """Open a run of `cfg`, run fetch, validate and prepare in it, wait for the other run to get as far, then
    publish; returns the run directory."""
    from modelyard import stages
    from modelyard.config import PipelineConfig
    from modelyard.runs import open_run

    cfg = PipelineConfig.model_validate(json.loads(cfg_json))
    with open_run(cfg, label=label) as run:
        for stage in (stages.fetch, stages.validate, stages.prepare):
            stage(run.cfg)
        barrier.wait(timeout=300)  # both runs have cut, validated and prepared their data
        run.publish()
    return str(run.dir)
