"""The register stage: log the evaluation, artifacts and lineage to the training's run, register the model
(with its ONNX export, its model card and the pip requirements of its family and modality), and decide its
alias."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from modelyard.artifact import read_spec
from modelyard.config import PipelineConfig
from modelyard.data.dataset import load_split
from modelyard.evaluation.evaluate import HEADLINE, score_model_dir
from modelyard.lineage import collect_lineage
from modelyard.modalities import Limits
from modelyard.models import config_class
from modelyard.paths import TaskPaths
from modelyard.registry.card import (
    CARD_FILE,
    MAX_DESCRIPTION_CHARS,
    CardSources,
    build_card,
    render_card,
    write_card,
)
from modelyard.registry.promotion import PromotionDecision, promote_if_better
from modelyard.registry.tracking import (
    claimed_run,
    end_run,
    get_run,
    log_artifacts,
    log_metrics,
    set_tags,
    start_run,
)
from modelyard.registry.versions import log_model, set_version_description, set_version_tags

log = logging.getLogger(__name__)

# What every registered model imports when loaded (modelyard's own code travels with it; see log_model); its
# family and modality add theirs.
MODEL_RUNTIME_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pydantic", "pyyaml", "mlflow")
ONNX_CHECK_ROWS = 128
SEARCH_TAG_PREFIX = "modelyard.search."  # tags a search's winner carries (modelyard.tuning.search)


REFERENCE_ROWS = 2000  # test rows in a version's reference profile


def register(cfg: PipelineConfig, paths: TaskPaths) -> dict[str, Any]:
    """Register the trained model of `paths` and promote it if it beats the champion; returns the summary
    (`registration.json`) with the markdown report under `report`."""
    uri = cfg.registry.resolved_tracking_uri()
    train_info = _read_json(paths.train_dir / "train.json", "run the train stage first")
    with claimed_run(uri, train_info.get("run_id")):  # from here a failure ends the training's run FAILED
        evaluation = _read_json(paths.eval_dir / "evaluation.json", "run the evaluate stage first")
        run_id = train_info.get("run_id") or start_run(uri, cfg.registry.experiment, params=cfg.flat(),
                                                       tags={"modelyard.stage": "register"})
        lineage = _log_evaluation(uri, run_id, paths, train_info, evaluation)
        run = get_run(uri, run_id)
        # A search's winner carries its search run on its training run (modelyard.stages.search): it names it
        # in its lineage and enters the registry as the challenger.
        search = {k: v for k, v in run["tags"].items() if k.startswith(SEARCH_TAG_PREFIX)}
        card_sources = _card_sources(cfg, paths, run_id, run["params"], evaluation, train_info, lineage)
        version, onnx_tags, card = _log_model(cfg, paths, uri, run_id, card_sources)
        set_version_tags(uri, cfg.task_name, version, lineage | onnx_tags | search)
        _describe(paths, uri, run_id, card | {"version": version})
        decision = promote_if_better(  # under the registry's own lock: runs registering at once take turns
            uri, cfg.task_name, version, metric="test.accuracy", value=float(evaluation["accuracy"]),
            test_set_hash=evaluation["test_set_sha256"], champion_alias=cfg.registry.champion_alias,
            challenger_alias=cfg.registry.challenger_alias,
            score_champion=lambda model_dir: score_model_dir(model_dir, paths.dataset_dir)["accuracy"],
            enter_as_challenger=bool(search))
        summary, report = _write_registration(paths, uri, run_id, cfg.task_name, version, decision, onnx_tags)
        log_artifacts(uri, run_id, paths.register_dir / "report.md")
        end_run(uri, run_id)
    log.info("registered %s v%s -> @%s: %s", cfg.task_name, version, decision.alias, decision.reason)
    return summary | {"report": report}


def _log_evaluation(uri: str, run_id: str, paths: TaskPaths, train_info: dict[str, Any],
                    evaluation: dict[str, Any]) -> dict[str, str]:
    """Test metrics, artifacts and lineage on the run; returns the lineage tags."""
    metrics = {f"test/{k}": evaluation[k] for k in HEADLINE if k != "count"}
    metrics |= {f"test/f1/{label}": m["f1"] for label, m in evaluation["per_class"].items()}
    metrics |= {"train/wall_time_s": train_info["wall_time_s"]}
    if "feedback_holdout" in evaluation:
        metrics |= {"feedback_holdout/accuracy": evaluation["feedback_holdout"]["accuracy"],
                    "feedback_holdout/count": evaluation["feedback_holdout"]["count"],
                    "feedback/train_rows": evaluation["feedback_holdout"]["train_rows"]}
    log_metrics(uri, run_id, {k.replace(" ", "_"): v for k, v in metrics.items()})
    lineage = collect_lineage({"dataset": paths.dataset_dir, "prepared": paths.prepared_dir, "model": paths.model_dir})
    set_tags(uri, run_id, lineage | {"test_set_sha256": evaluation["test_set_sha256"]})
    log_artifacts(uri, run_id, paths.eval_dir, "evaluation")
    log_artifacts(uri, run_id, paths.train_dir / "tensorboard", "tensorboard")
    log_artifacts(uri, run_id, paths.validation_dir, "validation")
    return lineage


def _log_model(cfg: PipelineConfig, paths: TaskPaths, uri: str, run_id: str,
               card_sources: CardSources) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A new version of the task's registered model (with its ONNX export when asked, its reference profile and
    its model card beside the weights); returns it, the ONNX report as version tags, and the card."""
    spec = read_spec(paths.model_dir)
    test = load_split(paths.dataset_dir, "test")
    with tempfile.TemporaryDirectory(prefix="modelyard-register-") as tmp:
        # Into a copy: the train stage's output stays as DVC recorded it.
        model_dir, onnx_tags = Path(shutil.copytree(paths.model_dir, Path(tmp) / "model")), {}
        if cfg.registry.export_onnx:
            from modelyard.inference.onnx_export import export_and_check

            report = export_and_check(model_dir, test.take(slice(0, ONNX_CHECK_ROWS)).inputs)
            onnx_tags = {f"onnx.{k}": v for k, v in report.items()}
        from modelyard.monitoring.profile import write_reference

        write_reference(model_dir, test.take(slice(0, REFERENCE_ROWS)).inputs, cfg.task_name)
        card = build_card(card_sources, model_dir, onnx_tags, test)  # measures latency: the model is loaded anyway
        write_card(model_dir, card)  # its version is not known yet: `read_card` adds it
        version = log_model(uri, run_id, model_dir, cfg.task_name,
                            input_example=spec.modality.input_example(test, 2),
                            pip_requirements=pip_requirements(spec.modality.runtime_packages
                                                              + config_class(spec.family).runtime_packages))
    return version, onnx_tags, card


def _card_sources(cfg: PipelineConfig, paths: TaskPaths, run_id: str, params: dict[str, str],
                  evaluation: dict[str, Any], train_info: dict[str, Any], lineage: dict[str, str]) -> CardSources:
    serve = cfg.serve.for_app(cfg.task_name)
    return CardSources(
        task=cfg.task_name, dataset_dir=paths.dataset_dir, evaluation=evaluation, train_info=train_info,
        run_id=run_id, params=params, lineage=lineage,
        url=f"http://{serve.host}:{serve.port}{serve.route(cfg.task_name)}/predict",
        limits=Limits(serve.max_upload_bytes), backend=serve.backend, sample=_sample(paths))


def _sample(paths: TaskPaths) -> Path:
    """A real test input to send the served model: the first of data/samples/<dataset>/, written (as `modelyard
    try` writes them) when there are none."""
    from modelyard.data.dataset import load_split, modality_of, read_metadata

    samples = sorted(p for p in paths.samples_dir.glob("*") if p.is_file())
    if not samples:
        meta = read_metadata(paths.dataset_dir)
        samples = modality_of(meta).write_samples(load_split(paths.dataset_dir, "test"), list(meta["classes"]),
                                                  paths.samples_dir)
    return samples[0]


def _describe(paths: TaskPaths, uri: str, run_id: str, card: dict[str, Any]) -> None:
    """The card as the version's MLflow description, and in register/ (logged to the run) as JSON and markdown."""
    set_version_description(uri, card["task"], card["version"], render_card(card, MAX_DESCRIPTION_CHARS))
    out = paths.register_dir
    out.mkdir(parents=True, exist_ok=True)
    write_card(out, card)
    (out / "model_card.md").write_text(render_card(card))
    for name in (CARD_FILE, "model_card.md"):
        log_artifacts(uri, run_id, out / name)


def pip_requirements(packages: tuple[str, ...] = ()) -> list[str]:
    """The installed versions of what a registered model imports."""
    from importlib.metadata import version

    names = dict.fromkeys((*MODEL_RUNTIME_PACKAGES, *packages))
    return [f"{pkg}=={version(pkg)}" for pkg in names]


def _write_registration(paths: TaskPaths, uri: str, run_id: str, name: str, version: str,
                        decision: PromotionDecision, onnx_tags: dict[str, Any]) -> tuple[dict[str, Any], str]:
    out = paths.register_dir
    out.mkdir(parents=True, exist_ok=True)
    report = (paths.eval_dir / "report.md").read_text() + "\n" + decision.to_markdown() + _onnx_markdown(onnx_tags)
    (out / "report.md").write_text(report)
    summary = {"run_id": run_id, "tracking_uri": uri, "model_uri": f"models:/{name}/{version}", **decision.to_dict()}
    (out / "registration.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, report


def _onnx_markdown(tags: dict[str, Any]) -> str:
    if not tags:
        return ""
    if tags.get("onnx.status") == "ok":
        return (f"\n## ONNX\n\nExported (`model.onnx`, dynamic batch axis) in {tags['onnx.export_s']} s; ONNX Runtime "
                f"against PyTorch on {tags['onnx.rows']} test rows: max |logit diff| "
                f"{tags['onnx.max_abs_logit_diff']:.2e}, argmax agreement {tags['onnx.argmax_agreement']:.4f}.\n")
    return f"\n## ONNX\n\nNot usable, so serving runs this version with torch: {tags.get('onnx.reason')}\n"


def _read_json(path: Path, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {hint}")
    return json.loads(path.read_text())
