"""One Prefect task per pipeline stage. No ML logic here: each calls `modelyard.stages`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from modelyard import stages
from modelyard.config import PipelineConfig
from modelyard.data.validate import DataValidationError
from modelyard.runs import Run
from modelyard.tuning.config import SearchConfig
from modelyard.tuning.records import SearchResult


@task(name="fetch", retries=2, retry_delay_seconds=5)
def fetch_task(cfg: PipelineConfig) -> str:
    return str(stages.fetch(cfg))


@task(name="validate")
def validate_task(cfg: PipelineConfig) -> dict[str, Any]:
    """Fails the flow (before training) when the data break the suite; the report is an artifact either way."""
    try:
        report = stages.validate(cfg)
    except DataValidationError as exc:
        create_markdown_artifact(exc.report.to_markdown(), key="data-validation", description=str(exc))
        raise
    create_markdown_artifact(report.to_markdown(), key="data-validation", description="Great Expectations suite")
    return {"checks": len(report.checks), "success": report.success}


@task(name="prepare")
def prepare_task(cfg: PipelineConfig) -> str:
    return str(stages.prepare(cfg))


@task(name="train")
def train_task(cfg: PipelineConfig, tags: dict[str, str] | None = None) -> dict[str, Any]:
    result = stages.train(cfg, tags=tags)
    return {"run_id": result.run_id, "model_dir": result.model_dir, "wall_time_s": result.wall_time_s,
            "final": result.final}


@task(name="search")
def search_task(cfg: PipelineConfig, settings: SearchConfig, space: dict[str, Any] | None) -> SearchResult:
    """The trials, ranked; the report (with where its plots are in MLflow) is an artifact."""
    result = stages.search(cfg, settings, space)
    where = (f"\n\nPlots and CSV: MLflow run `{result.parent_run_id}`, artifacts `search/`; on the runner: "
             f"`{result.out_dir}/report/`.\n")
    create_markdown_artifact(result.report_md + where, key="search-report",
                             description=f"best {result.best.trial_id}: val accuracy {result.best.score:.4f}")
    return result


@task(name="evaluate")
def evaluate_task(cfg: PipelineConfig) -> dict[str, Any]:
    result = stages.evaluate(cfg)
    create_markdown_artifact(Path(result.report_path).read_text(), key="evaluation-report",
                             description=f"test accuracy {result.metrics['accuracy']:.4f}")
    return result.summary


@task(name="register")
def register_task(cfg: PipelineConfig) -> dict[str, Any]:
    summary = stages.register(cfg)
    create_markdown_artifact(summary.pop("report"), key="pipeline-report",
                             description=f"{summary['name']} v{summary['version']} -> @{summary['alias']}")
    return summary


@task(name="publish")
def publish_task(run: Run) -> str:
    """Copy the run's outputs to its task's stable paths (see modelyard.runs); returns its run directory."""
    run.publish()
    return str(run.dir)


@task(name="deploy", retries=1, retry_delay_seconds=10)
def deploy_task(cfg: PipelineConfig) -> dict[str, Any]:
    from serving.deploy import deploy

    return deploy(cfg.resolved_serve(), cfg.registry, model_name=cfg.task_name)
