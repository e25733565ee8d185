"""Small, isolated configurations: params.yaml's run with every path under a test's directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from helpers.paths import REPO, TEST_DATA_DIR
from helpers.ports import free_port
from modelyard.config import PipelineConfig, load_config


def small_config(tmp: Path, recipe: str | None = None, **overrides: dict[str, Any]) -> PipelineConfig:
    """params.yaml (with `recipe` applied) writing under `tmp`, reading raw downloads from the tests' shared
    copy, with a short, small training run. `overrides` are sections merged over that."""
    base: dict[str, Any] = {
        "data": {"train_limit": 4000, "test_limit": 1000},
        "train": {"epochs": 2, "batch_size": 128},
        "registry": {"tracking_uri": f"sqlite:///{tmp / 'mlflow/mlflow.db'}", "experiment": "tests"},
        "serve": {"port": free_port(), "replicas": 2},
        "paths": {"data_dir": str(tmp / "data"), "raw_dir": str(TEST_DATA_DIR / "raw"),
                  "artifacts_dir": str(tmp / "artifacts")},
    }
    for section, values in overrides.items():
        base.setdefault(section, {}).update(values)
    if recipe:
        base["recipe"] = recipe
    return load_config(REPO / "params.yaml", base)


def write_params(cfg: PipelineConfig, path: Path) -> Path:
    """`cfg` as a parameter file (what a runner started with `-p` or MODELYARD_PARAMS reads)."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))
    return path
