"""One function per pipeline stage, shared by the CLI (hence `dvc repro`) and the Prefect tasks.

Each reads its inputs from and writes its outputs to the paths in the config, so a stage can run alone
(`modelyard train`), in `dvc repro`, or in a Prefect flow, with the same result.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelyard.config import PipelineConfig
from modelyard.runtime import owner_alive, process_owner

log = logging.getLogger(__name__)


def prepared_dir(cfg: PipelineConfig) -> Path:
    return Path(cfg.augment.prepared_dir) / cfg.data.dataset


def registration_dir(cfg: PipelineConfig) -> Path:
    return Path(cfg.evaluate.output_dir).parent / "register"


def fetch(cfg: PipelineConfig) -> Path:
    from modelyard.data.fetch import fetch_dataset

    return fetch_dataset(cfg.data)


def validate(cfg: PipelineConfig):
    """Run the GX suite; raises DataValidationError (report written first) when the data break it."""
    from modelyard.data.validate import validate_dataset

    return validate_dataset(cfg.data.dataset_dir, cfg.validate_, cfg.validate_.report_dir)


def augment(cfg: PipelineConfig) -> Path:
    from modelyard.data.augment import prepare_splits

    return prepare_splits(cfg.data.dataset_dir, cfg.augment)


def train(cfg: PipelineConfig, *, track: bool = True, ray_address: str | None = None):
    """Open the pipeline's MLflow run, train with Ray Train, and record the run id with the model."""
    from modelyard import registry
    from modelyard.training.distributed import train as ray_train

    tracking_uri = cfg.registry.resolved_tracking_uri() if track else None
    run_id = None
    if tracking_uri:
        reap_orphaned_runs(tracking_uri, cfg.registry.experiment)
        run_id = registry.start_run(
            tracking_uri, cfg.registry.experiment, params=cfg.flat(),
            tags={"modelyard.stage": "train", "modelyard.model": cfg.model.name, "modelyard.dataset": cfg.data.dataset,
                  "modelyard.recipe": cfg.recipe or "", "modelyard.task": cfg.model_name, OWNER_TAG: process_owner(),
                  "modelyard.outputs": str(Path(cfg.train.output_dir).resolve().parent)},
        )
        log.info("MLflow run %s at %s", run_id, tracking_uri)
    try:
        result = ray_train(cfg, cfg.data.dataset_dir, prepared_dir(cfg), run_id=run_id, tracking_uri=tracking_uri,
                           ray_address=ray_address)
    except BaseException:
        if run_id:
            registry.end_run(tracking_uri, run_id, status="FAILED")
        raise
    if run_id:  # left RUNNING for evaluate and register, which claim it in turn
        registry.set_tags(tracking_uri, run_id, {OWNER_TAG: ""})
    return result


OWNER_TAG = "modelyard.owner"  # host:pid:start time of the process that opened the run


def reap_orphaned_runs(tracking_uri: str, experiment: str) -> list[str]:
    """End FAILED the RUNNING runs whose process on this host is gone (killed, or the machine restarted):
    a process that dies by SIGKILL or power loss never gets to mark its own run. Returns their ids."""
    from modelyard import registry

    reaped = []
    for run_id, owner in registry.running_runs(tracking_uri, experiment, OWNER_TAG):
        if owner_alive(owner) is not False:
            continue  # alive, or another machine's run: only that machine can tell whether it is alive
        registry.set_tags(tracking_uri, run_id, {"modelyard.failure": f"its process ({owner}) died while it ran"})
        registry.end_run(tracking_uri, run_id, status="FAILED")
        log.warning("MLflow run %s was left RUNNING by a process that died (%s): marked FAILED", run_id, owner)
        reaped.append(run_id)
    return reaped


@contextmanager
def _failing_marks_run(cfg: PipelineConfig) -> Iterator[None]:
    """A stage after training works on the training's MLflow run: it claims the run (its process in the
    owner tag, so a death of the process is found by the next training), ends it FAILED if the stage fails,
    and hands it on when it succeeds. A run that has already ended (an earlier, complete pipeline's) is left
    as it is.
    """
    from modelyard import registry

    run_id = _training_run_id(cfg)
    uri = cfg.registry.resolved_tracking_uri()

    def running() -> bool:
        try:
            return bool(run_id) and registry.get_run(uri, run_id)["status"] == "RUNNING"
        except Exception as exc:  # no tracking server: the stage itself will say so
            log.debug("could not read MLflow run %s: %s", run_id, exc)
            return False

    claimed = running()
    if claimed:
        registry.set_tags(uri, run_id, {OWNER_TAG: process_owner()})
    try:
        yield
    except BaseException:
        try:
            if running():
                registry.end_run(uri, run_id, status="FAILED")
                log.error("marked MLflow run %s FAILED", run_id)
        except Exception as exc:  # the stage's own error matters more than this one
            log.warning("could not mark MLflow run %s FAILED: %s", run_id, exc)
        raise
    if claimed and running():
        registry.set_tags(uri, run_id, {OWNER_TAG: ""})


def _training_run_id(cfg: PipelineConfig) -> str | None:
    path = Path(cfg.train.output_dir) / "train.json"
    try:
        return json.loads(path.read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def evaluate(cfg: PipelineConfig):
    with _failing_marks_run(cfg):
        return _evaluate(cfg)


def _evaluate(cfg: PipelineConfig):
    from modelyard.evaluation.evaluate import evaluate as run_evaluation

    train_dir = Path(cfg.train.output_dir)
    return run_evaluation(train_dir / "model", cfg.data.dataset_dir, cfg.evaluate.output_dir,
                          history_path=train_dir / "history.json", metrics_path=cfg.evaluate.metrics_path)


def register(cfg: PipelineConfig) -> dict[str, Any]:
    """Log evaluation, artifacts and lineage to the training run, register the model, decide the alias."""
    with _failing_marks_run(cfg):
        return _register(cfg)


def _onnx_markdown(tags: dict[str, Any]) -> str:
    if not tags:
        return ""
    if tags.get("onnx.status") == "ok":
        return (f"\n## ONNX\n\nExported (`model.onnx`, dynamic batch axis) in {tags['onnx.export_s']} s; ONNX Runtime "
                f"against PyTorch on {tags['onnx.rows']} test rows: max |logit diff| "
                f"{tags['onnx.max_abs_logit_diff']:.2e}, argmax agreement {tags['onnx.argmax_agreement']:.4f}.\n")
    return f"\n## ONNX\n\nNot usable, so serving runs this version with torch: {tags.get('onnx.reason')}\n"


def _register(cfg: PipelineConfig) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from modelyard import registry
    from modelyard.data.dataset import TextSplit, load_split
    from modelyard.evaluation.evaluate import score_model_dir
    from modelyard.lineage import collect_lineage

    tracking_uri = cfg.registry.resolved_tracking_uri()
    train_dir, eval_dir = Path(cfg.train.output_dir), Path(cfg.evaluate.output_dir)
    train_info = _read_json(train_dir / "train.json", "run the train stage first")
    evaluation = _read_json(eval_dir / "evaluation.json", "run the evaluate stage first")
    run_id = train_info.get("run_id")
    if not run_id:
        run_id = registry.start_run(tracking_uri, cfg.registry.experiment, params=cfg.flat(),
                                    tags={"modelyard.stage": "register"})

    metrics = {f"test/{k}": evaluation[k] for k in ("accuracy", "macro_f1", "macro_precision", "macro_recall")}
    metrics |= {f"test/f1/{label}": m["f1"] for label, m in evaluation["per_class"].items()}
    metrics |= {"train/wall_time_s": train_info["wall_time_s"]}
    registry.log_metrics(tracking_uri, run_id, {k.replace(" ", "_"): v for k, v in metrics.items()})
    lineage = collect_lineage({
        "dataset": cfg.data.dataset_dir, "prepared": prepared_dir(cfg), "model": train_dir / "model",
    })
    registry.set_tags(tracking_uri, run_id, lineage | {"test_set_sha256": evaluation["test_set_sha256"]})
    registry.log_artifacts(tracking_uri, run_id, eval_dir, "evaluation")
    registry.log_artifacts(tracking_uri, run_id, train_dir / "tensorboard", "tensorboard")
    registry.log_artifacts(tracking_uri, run_id, cfg.validate_.report_dir, "validation")

    test = load_split(cfg.data.dataset_dir, "test")
    is_text = isinstance(test, TextSplit)
    example = pd.DataFrame({"text": test.texts[:2]}) if is_text else np.ascontiguousarray(test.images[:2])
    with tempfile.TemporaryDirectory(prefix="modelyard-register-") as tmp:
        model_dir, onnx_tags = train_dir / "model", {}
        if cfg.registry.export_onnx:  # into a copy: the train stage's output stays as DVC recorded it
            from modelyard.inference.onnx import export_and_check

            model_dir = Path(shutil.copytree(train_dir / "model", Path(tmp) / "model"))
            check_rows = list(test.texts[:64]) if is_text else test.images[:256]
            onnx_report = export_and_check(model_dir, check_rows)
            onnx_tags = {f"onnx.{k}": v for k, v in onnx_report.items()}
        version = registry.log_model(
            tracking_uri, run_id, model_dir, cfg.model_name,
            input_example=example, pip_requirements=_pip_requirements(cfg.model.name),
        )
    registry.set_version_tags(tracking_uri, cfg.model_name, version, lineage | onnx_tags)
    with _registry_lock(tracking_uri):  # two runs registering at once: each compares with the champion it sets
        decision = registry.promote_if_better(
            tracking_uri, cfg.model_name, version,
            metric="test.accuracy", value=float(evaluation["accuracy"]), test_set_hash=evaluation["test_set_sha256"],
            champion_alias=cfg.registry.champion_alias, challenger_alias=cfg.registry.challenger_alias,
            score_champion=lambda model_dir: score_model_dir(model_dir, cfg.data.dataset_dir)["accuracy"],
        )
    out = registration_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    report = (eval_dir / "report.md").read_text() + "\n" + decision.to_markdown() + _onnx_markdown(onnx_tags)
    (out / "report.md").write_text(report)
    summary = {"run_id": run_id, "tracking_uri": tracking_uri, "model_uri": f"models:/{cfg.model_name}/{version}",
               **decision.to_dict()}
    (out / "registration.json").write_text(json.dumps(summary, indent=2) + "\n")
    registry.log_artifacts(tracking_uri, run_id, out / "report.md")
    registry.end_run(tracking_uri, run_id)
    log.info("registered %s v%s -> @%s: %s", cfg.model_name, version, decision.alias, decision.reason)
    return summary | {"report": report}


def _registry_lock(tracking_uri: str):
    """A lock per registry, for the runs of this host (runs on several hosts would need the registry's own)."""
    import hashlib

    from filelock import FileLock

    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return FileLock(Path(tempfile.gettempdir()) / f"modelyard-registry-{digest}.lock")


def _read_json(path: Path, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {hint}")
    return json.loads(path.read_text())


# What the registered model imports when loaded (modelyard's own code travels with it; see registry.log_model).
MODEL_RUNTIME_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pillow", "pydantic", "pyyaml", "mlflow")
# and what a family needs beside them
FAMILY_PACKAGES = {"transfer": ("timm",), "bert": ("transformers", "tokenizers"), "lstm": ("tokenizers",)}


def _pip_requirements(family: str = "") -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in (*MODEL_RUNTIME_PACKAGES, *FAMILY_PACKAGES.get(family, ()))]
