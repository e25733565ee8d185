"""One function per pipeline stage, shared by the CLI (hence `dvc repro`) and the Prefect tasks.

Each reads its inputs from, and writes its outputs to, the paths `modelyard.paths` derives from the config, so
a stage can run alone (`modelyard train`), in `dvc repro`, or in a Prefect flow, with the same result.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from modelyard.config import PipelineConfig
from modelyard.paths import TaskPaths

log = logging.getLogger(__name__)


def fetch(cfg: PipelineConfig) -> Path:
    from modelyard.data.fetch import fetch_dataset

    paths = TaskPaths.of(cfg)
    return fetch_dataset(cfg.data, paths.dataset_dir, paths.raw_dir, local_dir=cfg.paths.local_source_dir)


def validate(cfg: PipelineConfig):
    """Run the GX suite; raises DataValidationError (report written first) when the data break it."""
    from modelyard.data.validate import validate_dataset

    paths = TaskPaths.of(cfg)
    return validate_dataset(paths.dataset_dir, cfg.validate_, paths.validation_dir)


def prepare(cfg: PipelineConfig) -> Path:
    from modelyard.data.prepare import prepare_splits

    paths = TaskPaths.of(cfg)
    return prepare_splits(paths.dataset_dir, cfg.prepare, paths.prepared_dir)


def train(cfg: PipelineConfig, *, track: bool = True, ray_address: str | None = None,
          tags: dict[str, str] | None = None):
    """Train with Ray Train on data the validation passed and the split cut from them, in the pipeline's MLflow
    run (opened here, left RUNNING for evaluate and register; `tags` added to it)."""
    from modelyard.data.prepare import check_prepared
    from modelyard.data.validate import check_validated
    from modelyard.models import family_config
    from modelyard.registry import tracking
    from modelyard.training.distributed import train as ray_train

    paths, family = TaskPaths.of(cfg), family_config(cfg.model)
    check_validated(paths.validation_dir, paths.dataset_dir)
    check_prepared(paths.prepared_dir, paths.dataset_dir)
    uri = cfg.registry.resolved_tracking_uri() if track else None
    run_id = None
    if uri:
        params = cfg.flat() | {f"model.{k}": v for k, v in family.model_dump(mode="json").items()}
        run_id = tracking.open_training_run(uri, cfg.registry.experiment, params, tags={
            "modelyard.stage": "train", "modelyard.model": family.name, "modelyard.dataset": cfg.data.dataset,
            "modelyard.recipe": cfg.recipe or "", "modelyard.task": cfg.task_name,
            "modelyard.outputs": str(paths.task_dir.resolve())} | (tags or {}))
        log.info("MLflow run %s at %s", run_id, uri)
        tracking.log_config(uri, run_id, cfg)
    try:
        result = ray_train(cfg, family, paths.dataset_dir, paths.prepared_dir, paths.train_dir, run_id=run_id,
                           sink=tracking.RunLogger(uri, run_id) if run_id else None, ray_address=ray_address)
    except BaseException:
        if run_id:
            tracking.end_run(uri, run_id, status="FAILED")
        raise
    if run_id:
        tracking.hand_on(uri, run_id)
    return result


def evaluate(cfg: PipelineConfig):
    """Score the trained model on the test split, as part of the training's MLflow run."""
    from modelyard.evaluation.evaluate import evaluate as run_evaluation
    from modelyard.registry.tracking import claimed_run

    paths = TaskPaths.of(cfg)
    with claimed_run(cfg.registry.resolved_tracking_uri(), training_run_id(paths)):
        return run_evaluation(paths.model_dir, paths.dataset_dir, paths.eval_dir, paths.metrics_path,
                              history_path=paths.train_dir / "history.json", batch_size=cfg.evaluate.batch_size)


def register(cfg: PipelineConfig) -> dict[str, Any]:
    """Log evaluation, artifacts and lineage to the training run, register the model, decide the alias."""
    from modelyard.registry.registration import register as run_registration

    return run_registration(cfg, TaskPaths.of(cfg))


def search(cfg: PipelineConfig, settings=None, space: dict[str, Any] | None = None, *,
           ray_address: str | None = None):
    """Search the task's hyper-parameters (modelyard.tuning) on the prepared split the validation passed; the
    report goes to `<task>/search/`, the trials to MLflow (a parent run, a child run per trial). `space` is
    merged over the family's (or recipe's) space. Returns the SearchResult; `winner_config` is the next step."""
    from modelyard.data.prepare import check_prepared
    from modelyard.data.validate import check_validated
    from modelyard.tuning.config import SearchConfig
    from modelyard.tuning.search import run_search, save_result
    from modelyard.tuning.space import resolve_space

    paths = TaskPaths.of(cfg)
    check_validated(paths.validation_dir, paths.dataset_dir)
    check_prepared(paths.prepared_dir, paths.dataset_dir)
    resolved = resolve_space(cfg, space)
    out = paths.search_dir
    result = run_search(cfg, resolved, settings or SearchConfig(), paths.dataset_dir, paths.prepared_dir, out,
                        tracking_uri=cfg.registry.resolved_tracking_uri(), ray_address=ray_address)
    save_result(result, out / "search.json")
    return result


def winner_config(cfg: PipelineConfig, result) -> tuple[PipelineConfig, dict[str, str]]:
    """The searched config with the best trial's settings, and the tags its training run carries (which search,
    which trial): the pipeline then retrains it, and registration enters it as the challenger."""
    from modelyard.tuning.records import SEARCH_TAG, TRIAL_TAG
    from modelyard.tuning.search import winner_overrides

    tags = {SEARCH_TAG: result.parent_run_id or "", TRIAL_TAG: result.best.trial_id,
            "modelyard.search.val_accuracy": f"{result.best.score:.4f}"}
    return cfg.with_overrides(winner_overrides(result)), tags


def samples(cfg: PipelineConfig) -> list[Path]:
    """One real test input per class under data/samples/<dataset>/, to try the served model with."""
    from modelyard.data.dataset import load_split, modality_of, read_metadata

    paths = TaskPaths.of(cfg)
    meta = read_metadata(paths.dataset_dir)
    return modality_of(meta).write_samples(load_split(paths.dataset_dir, "test"), list(meta["classes"]),
                                           paths.samples_dir)


def training_run_id(paths: TaskPaths) -> str | None:
    """The MLflow run the last training into `paths` opened (None when it was not tracked)."""
    try:
        return json.loads((paths.train_dir / "train.json").read_text()).get("run_id")
    except (OSError, ValueError):
        return None
