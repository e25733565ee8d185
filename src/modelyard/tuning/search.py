"""A hyper-parameter search with Ray Tune: Optuna's TPE sampler proposes each trial's settings, ASHA stops the
trials that trail, every trial is an MLflow child run of the search's parent run.

    result = run_search(cfg, space, SearchConfig(trials=12), dataset_dir, prepared_dir, out_dir)
    result.best.sample   # {"train.learning_rate": 0.04, "model.hidden": 1024, ...}

The search ranks trials by their last validation accuracy; a trial ASHA stopped never outranks one that ran
its whole schedule (its score is of a model trained for fewer epochs than its settings ask for). What the winner
becomes is the caller's choice: the pipeline retrains it with its settings (modelyard.stages.search).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from modelyard.config import PipelineConfig
from modelyard.tuning.config import SearchConfig
from modelyard.tuning.records import SearchResult, rank
from modelyard.tuning.space import describe

log = logging.getLogger(__name__)


def choose_engine(cfg: PipelineConfig, settings: SearchConfig) -> str:
    """local unless asked otherwise or a trial needs several Ray Train workers."""
    if settings.engine != "auto":
        return settings.engine
    return "ray_train" if isinstance(cfg.train.num_workers, int) and cfg.train.num_workers > 1 else "local"


def trial_resources(cfg: PipelineConfig, settings: SearchConfig, engine: str,
                    nodes: list[dict[str, float]]) -> tuple[dict[str, float], int]:
    """What each trial's Tune actor reserves, and how many trials run at once.

    local: the trial trains in its own actor, which reserves `cpus_per_trial` CPUs (and a GPU where there
    are GPUs). ray_train: the actor only drives a TorchTrainer and reserves nothing; the trainer's workers
    reserve theirs (planned as for any training, `cpus_per_trial` each), so the cluster's CPUs / a trial's
    workers' CPUs is how many fit at once.
    """
    cpus = sum(n.get("CPU", 0) for n in nodes)
    gpus = sum(n.get("GPU", 0) for n in nodes)
    use_gpu = cfg.train.use_gpu == "true" or (cfg.train.use_gpu == "auto" and gpus >= 1)
    if engine == "local":
        need = {"CPU": float(settings.cpus_per_trial)} | ({"GPU": 1.0} if use_gpu else {})
        fits = int(gpus) if use_gpu else int(cpus // settings.cpus_per_trial)
    else:
        workers = cfg.train.num_workers if isinstance(cfg.train.num_workers, int) else 1
        # No CPU (its trainer's workers hold those), but Tune needs something in a trial's bundle: 1 MiB of memory.
        need = {"CPU": 0.0, "memory": float(1024**2)}
        fits = int(gpus // workers) if use_gpu else int(cpus // (workers * settings.cpus_per_trial))
    if fits < 1:
        raise ValueError(f"a trial needs more than the cluster has ({cpus:g} CPUs, {gpus:g} GPUs); lower "
                         "cpus_per_trial or train.num_workers")
    wanted = settings.concurrency if isinstance(settings.concurrency, int) else fits
    return need, max(1, min(wanted, fits, settings.trials))


def run_search(cfg: PipelineConfig, space: dict[str, Any], settings: SearchConfig, dataset_dir: Path,
               prepared_dir: Path, out_dir: Path, *, tracking_uri: str | None = None,
               ray_address: str | None = None) -> SearchResult:
    """Search `space` around `cfg` on the prepared split; writes the report into `out_dir` (replaced) and, with
    a tracking URI, one MLflow parent run with a child run per trial."""
    import ray

    from modelyard.runtime import connect_ray
    from modelyard.tuning import _tune
    from modelyard.tuning.report import write_report

    out_dir = Path(out_dir).resolve()
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    engine = choose_engine(cfg, settings)
    if engine == "ray_train":  # each trial's trainer: its workers, cpus_per_trial CPUs each
        cfg = cfg.with_overrides({"train": {"cpus_per_worker": settings.cpus_per_trial}})
    started_ray = not ray.is_initialized()
    connect_ray(ray_address)
    parent = None
    try:
        resources, concurrency = trial_resources(cfg, settings, engine,
                                                 [n["Resources"] for n in ray.nodes() if n.get("Alive")])
        parent = _open_parent(tracking_uri, cfg, settings, space, engine, concurrency)
        log.info("search: %d trials of %s on %s, %d at once (%s engine, %s each), %s, time budget %s; space:\n  %s",
                 settings.trials, cfg.model.name, cfg.data.dataset, concurrency, engine,
                 ", ".join(f"{v:g} {k}" for k, v in resources.items() if k != "memory"), settings.scheduler,
                 f"{settings.time_budget_min:g} min" if settings.time_budget_min else "none",
                 "\n  ".join(describe(space)))
        tuner, runs = _tune.build_tuner(
            cfg, space, settings, resources, concurrency, out_dir / "ray", tracking_uri, parent,
            # Absolute: a trial runs in its own directory (Tune's), not this process's.
            trial_kwargs={"base": cfg.model_dump_json(by_alias=True), "dataset_dir": str(Path(dataset_dir).resolve()),
                          "prepared_dir": str(Path(prepared_dir).resolve()), "engine": engine,
                          "threads": settings.cpus_per_trial})
        start = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - start
        trials = runs.records()
        if not any(t.history for t in trials):
            errors = [str(r.error) for r in grid if r.error is not None]
            raise RuntimeError(f"no trial of the search reported a result; first error: {errors[:1]}")
        result = SearchResult(cfg.task_name, parent, space, settings.model_dump(mode="json"), rank(trials), engine,
                              concurrency, round(wall, 1), str(out_dir))
        write_report(result, cfg)
        _close_parent(tracking_uri, parent, result)
        log.info("search: %d trials in %.0f s, %d stopped early by ASHA; best %s val accuracy %.4f with %s",
                 len(trials), wall, result.stopped_early, result.best.trial_id, result.best.score, result.best.sample)
        return result
    except BaseException:
        if tracking_uri and parent:
            from modelyard.registry import tracking

            tracking.end_run(tracking_uri, parent, status="FAILED")
        raise
    finally:
        if started_ray:
            ray.shutdown()


def _open_parent(tracking_uri: str | None, cfg: PipelineConfig, settings: SearchConfig, space: dict[str, Any],
                 engine: str, concurrency: int) -> str | None:
    """The search's MLflow run (RUNNING until the search ends), owned by this process like a training run."""
    if not tracking_uri:
        return None
    from modelyard.registry import tracking
    from modelyard.runtime import process_owner

    parent = tracking.start_run(
        tracking_uri, cfg.registry.experiment, run_name=f"search-{cfg.task_name}",
        params={"search." + k: v for k, v in settings.model_dump(mode="json").items()}
        | {"search.space": space, "search.engine": engine, "search.concurrency": concurrency, "recipe": cfg.recipe},
        tags={"modelyard.stage": "search", "modelyard.task": cfg.task_name, "modelyard.recipe": cfg.recipe or "",
              "modelyard.model": cfg.model.name, "modelyard.dataset": cfg.data.dataset,
              tracking.OWNER_TAG: process_owner()})
    log.info("search: MLflow parent run %s", parent)
    return parent


def _close_parent(tracking_uri: str | None, parent: str | None, result: SearchResult) -> None:
    """The best trial, counts and the report (with its plots) on the search's run, which ends FINISHED."""
    if not (tracking_uri and parent):
        return
    from modelyard.registry import tracking

    best = result.best
    tracking.log_metrics(tracking_uri, parent, {
        "search/best_val_accuracy": best.score, "search/trials": len(result.trials),
        "search/stopped_early": result.stopped_early, "search/wall_time_s": result.wall_s})
    tracking.set_tags(tracking_uri, parent, {"modelyard.search.best_trial": best.trial_id,
                                             "modelyard.search.best_run_id": best.run_id or "",
                                             "modelyard.search.best": json.dumps(best.sample)})
    tracking.log_artifacts(tracking_uri, parent, Path(result.out_dir) / "report", "search")
    tracking.end_run(tracking_uri, parent)


def winner_overrides(result: SearchResult) -> dict[str, Any]:
    """The winning trial's settings as config sections (to merge over the searched config)."""
    from modelyard.tuning.space import overrides

    return overrides(result.best.sample)


def save_result(result: SearchResult, path: Path) -> None:
    Path(path).write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")

