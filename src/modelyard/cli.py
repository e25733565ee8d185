"""`modelyard` command line: one command per stage, each a thin call into `modelyard.stages`.

    modelyard fetch | validate | augment | train | evaluate | register | pipeline
    modelyard train --set train.epochs=3 --set train.mixed_precision=none
    modelyard pipeline --recipe fashion-transfer      (`modelyard recipes` and `modelyard datasets` list them)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from modelyard.config import ConfigError, PipelineConfig, _deep_merge, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = logging.getLogger("modelyard")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Parameter file (DVC params).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-S", help="Override one parameter: section.key=value (repeatable).")]
RecipeOpt = Annotated[str | None, typer.Option("--recipe", "-r", help="A named recipe (`modelyard recipes`).")]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """["train.epochs=3", "data.sources=[debian]", "recipe=fashion-mlp"]
    -> {"train": {"epochs": 3}, "data": {"sources": ["debian"]}, "recipe": "fashion-mlp"}."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if sep and key == "recipe":
            out["recipe"] = raw.strip()
            continue
        if not sep or "." not in key:
            raise typer.BadParameter(f"expected section.key=value or recipe=<name>, got {item!r}", param_hint="--set")
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = yaml.safe_load(raw)  # YAML scalars: 3, 0.1, true, null, [a, b]
    return out


def _config(params: Path, overrides: list[str] | None, recipe: str | None = None) -> PipelineConfig:
    from modelyard.runtime import configure_environment, configure_logging

    configure_environment()
    configure_logging()
    parsed = parse_overrides(overrides)
    if recipe:
        parsed["recipe"] = recipe
    try:
        if os.environ.get("DVC_STAGE"):
            parsed = _deep_merge(dvc_edits(params), parsed)
        cfg = load_config(params, parsed)
        if os.environ.get("DVC_STAGE"):
            check_dvc_paths(cfg, params)
        return cfg
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def dvc_edits(params: Path) -> dict[str, Any]:
    """Under DVC: what `dvc exp run -S` changed in params.yaml against the committed file, so those edits
    win over a recipe named beside them (`-S recipe=rt-lstm -S train.epochs=2` trains 2 epochs)."""
    import subprocess
    import tempfile

    from modelyard.config import changed_from_params

    root = Path(os.environ.get("DVC_ROOT", "."))
    try:
        rel = params.resolve().relative_to(root.resolve())
        committed = subprocess.run(["git", "show", f"HEAD:{rel.as_posix()}"], cwd=root, capture_output=True,
                                   text=True, timeout=30)
    except (ValueError, OSError, subprocess.SubprocessError):
        return {}
    if committed.returncode != 0:
        return {}
    current = yaml.safe_load(params.read_text()) or {}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as base:
        base.write(committed.stdout)
        base.flush()
        sections = {k: v for k, v in current.items() if isinstance(v, dict)}
        return changed_from_params(sections, base.name)


def check_dvc_paths(cfg: PipelineConfig, params: Path) -> None:
    """Under `dvc repro`/`dvc exp run`, dvc.yaml's paths follow params.yaml's `data.dataset`: a recipe for
    another dataset would write where DVC does not look, so it is refused with the command that works."""

    written = ((yaml.safe_load(params.read_text()) or {}).get("data") or {}).get("dataset", "fashion_mnist")
    if written != cfg.data.dataset:
        raise ConfigError(
            f"recipe {cfg.recipe!r} trains on {cfg.data.dataset}, but params.yaml says data.dataset: {written}, and "
            f"dvc.yaml's paths follow it; run `dvc exp run -S recipe={cfg.recipe} -S data.dataset={cfg.data.dataset}`"
        )


@app.command()
def fetch(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Fetch the dataset into data/ from the first of its sources that answers (`modelyard datasets`)."""
    from modelyard import stages

    typer.echo(stages.fetch(_config(params, set_)))


@app.command()
def validate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Run the Great Expectations suite; exit 1 with the report when the data break it."""
    from modelyard import stages
    from modelyard.data.validate import DataValidationError

    cfg = _config(params, set_)
    try:
        report = stages.validate(cfg)
    except DataValidationError as exc:
        typer.echo(exc.report.to_markdown(), err=True)
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{len(report.checks)} expectations met; report in {cfg.validate_.report_dir}/report.md")


@app.command()
def augment(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Seeded train/val split and normalisation statistics (the policy itself runs inside training)."""
    from modelyard import stages

    typer.echo(stages.augment(_config(params, set_)))


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    no_track: Annotated[bool, typer.Option("--no-track", help="Do not log to MLflow.")] = False,
) -> None:
    """Train with Ray Train (N workers); writes the model, history and TensorBoard events."""
    from modelyard import stages

    result = stages.train(_config(params, set_), track=not no_track)
    typer.echo(json.dumps({"model_dir": result.model_dir, "run_id": result.run_id, "wall_time_s": result.wall_time_s,
                           **{k: round(v, 4) for k, v in result.final.items()}}, indent=2))


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Score the trained model on the test split; writes metrics.json, plots and report.md."""
    from modelyard import stages

    result = stages.evaluate(_config(params, set_))
    typer.echo(json.dumps(result.summary, indent=2))


@app.command()
def register(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Log to MLflow, register the model version, and promote it if it beats the champion."""
    from modelyard import stages

    summary = stages.register(_config(params, set_))
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "report"}, indent=2))


@app.command()
def pipeline(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, recipe: RecipeOpt = None) -> None:
    """All stages in order, without Prefect, in a run directory of its own (see modelyard.runs); its outputs
    are copied to the stable paths when it has registered."""
    from modelyard import stages
    from modelyard.runs import open_run

    cfg = _config(params, set_, recipe)
    log.info("pipeline: %s on %s -> registered as %s%s", cfg.model.name, cfg.data.dataset, cfg.model_name,
             f" (recipe {cfg.recipe})" if cfg.recipe else "")
    with open_run(cfg) as run:
        for stage in (stages.fetch, stages.validate, stages.augment, stages.train, stages.evaluate, stages.register):
            log.info("stage %s", stage.__name__)
            stage(run.cfg)
        run.publish()


@app.command()
def rollback(
    task: Annotated[str, typer.Argument(help="The registered model name (GET / on the server lists them).")],
    params: ParamsOpt = Path("params.yaml"),
    wait_s: Annotated[float, typer.Option(help="Seconds to wait for serving to answer with it (0: don't).")] = 120.0,
) -> None:
    """Give `champion` back to the version it had before; the served application follows in place."""
    import time
    import urllib.request

    from modelyard import registry

    cfg = load_config(params)
    uri = cfg.registry.resolved_tracking_uri()
    try:
        was, now = registry.rollback(uri, task, champion_alias=cfg.registry.champion_alias)
    except LookupError as exc:
        raise typer.BadParameter(str(exc), param_hint="task") from exc
    typer.echo(f"{task}: @{cfg.registry.champion_alias} moved from v{was} back to v{now}")
    if wait_s <= 0:
        return
    url = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(task)}/model"
    request = urllib.request.Request(url)
    if token := os.environ.get(cfg.serve.auth_token_env):
        request.add_header("Authorization", f"Bearer {token}")
    deadline, served = time.monotonic() + wait_s, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                info = json.loads(resp.read())
        except OSError:
            typer.echo(f"nothing serves {task} at {url}; the next deploy serves v{now}")
            return
        served = {str(v) for v in (info.get("replicas") or {}).values()} or {str(info.get("version"))}
        if served == {now}:
            typer.echo(f"{url} answers with v{now} (every replica)")
            return
        time.sleep(0.5)
    typer.echo(f"{url} still answers with {sorted(served or [])} after {wait_s:.0f} s (is serve.follow_aliases_s 0?)",
               err=True)
    raise typer.Exit(1)


@app.command()
def samples(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    out: Annotated[Path, typer.Option(help="Where to write the PNG files.")] = Path("data/samples"),
) -> None:
    """Write one real test image per class as PNG (for `curl -F file=@data/samples/shirt.png ...`)."""
    from modelyard.data.samples import export_samples

    paths = export_samples(_config(params, set_).data.dataset_dir, out)
    typer.echo(f"{len(paths)} sample images in {out}/")


@app.command("show-config")
def show_config(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, recipe: RecipeOpt = None) -> None:
    """Print the resolved parameters."""
    cfg = _config(params, set_, recipe)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
               + f"# registered model name: {cfg.model_name}")


@app.command()
def recipes() -> None:
    """List the named recipes (dataset + model + training settings)."""
    from modelyard.recipes import RECIPES, recipe_overrides

    for name, recipe in RECIPES.items():
        sections = recipe_overrides(name)
        typer.echo(f"{name:28} {sections['data']['dataset']:14} {sections['model']['name']:9} {recipe['description']}")


@app.command()
def datasets() -> None:
    """List the registered datasets, their sources (tried in this order) and augmentation defaults."""
    from modelyard.data.datasets import DATASET_NAMES, get_dataset

    for name in DATASET_NAMES:
        spec = get_dataset(name)
        shape = "x".join(map(str, spec.image_shape)) if spec.image_shape else "texts"
        typer.echo(f"{name:14} {spec.modality} {shape}, {len(spec.classes)} classes, sources "
                   f"{' > '.join(spec.sources)}; augment {spec.augment}; {spec.description}")


if __name__ == "__main__":
    app()
