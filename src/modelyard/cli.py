"""`modelyard` command line: one command per stage, each a thin call into `modelyard.stages`.

    modelyard fetch | validate | prepare | train | evaluate | register | pipeline
    modelyard train --set train.epochs=3 --set train.mixed_precision=none
    modelyard pipeline --recipe fashion-transfer      (`modelyard recipes`, `datasets`, `families` list them)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from modelyard.config import ConfigError, PipelineConfig, deep_merge, load_config

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
            parsed = deep_merge(dvc_edits(params), parsed)
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

    from modelyard.config import changed_sections, read_params

    root = Path(os.environ.get("DVC_ROOT", "."))
    try:
        rel = params.resolve().relative_to(root.resolve())
        committed = subprocess.run(["git", "show", f"HEAD:{rel.as_posix()}"], cwd=root, capture_output=True,
                                   text=True, timeout=30)
    except (ValueError, OSError, subprocess.SubprocessError):
        return {}
    if committed.returncode != 0:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as base:
        base.write(committed.stdout)
        base.flush()
        before = read_params(base.name)
    sections = {k: v for k, v in read_params(params).items() if isinstance(v, dict)}
    return changed_sections(sections, before)


def check_dvc_paths(cfg: PipelineConfig, params: Path) -> None:
    """Under `dvc repro`/`dvc exp run`, dvc.yaml's paths follow params.yaml's `data.dataset` and `model.name`:
    a recipe for another task would write where DVC does not look, so it is refused with the command that
    works."""
    from modelyard.config import read_params

    raw = read_params(params)
    written = ((raw.get("data") or {}).get("dataset"), (raw.get("model") or {}).get("name"))
    if written != (cfg.data.dataset, cfg.model.name):
        raise ConfigError(
            f"recipe {cfg.recipe!r} trains {cfg.model.name} on {cfg.data.dataset}, but params.yaml says "
            f"data.dataset: {written[0]} and model.name: {written[1]}, and dvc.yaml's paths follow them; run "
            f"`dvc exp run -S recipe={cfg.recipe} -S data.dataset={cfg.data.dataset} -S model.name={cfg.model.name}`")


@app.command()
def fetch(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, recipe: RecipeOpt = None) -> None:
    """Fetch the dataset into data/ from the first of its sources that answers (`modelyard datasets`)."""
    from modelyard import stages

    typer.echo(stages.fetch(_config(params, set_, recipe)))


@app.command()
def validate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Run the Great Expectations suite; exit 1 with the report when the data break it."""
    from modelyard import stages
    from modelyard.data.validate import DataValidationError
    from modelyard.paths import TaskPaths

    cfg = _config(params, set_)
    try:
        report = stages.validate(cfg)
    except DataValidationError as exc:
        typer.echo(exc.report.to_markdown(), err=True)
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{len(report.checks)} expectations met; report in {TaskPaths.of(cfg).validation_dir}/report.md")


@app.command()
def prepare(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Seeded train/val split, statistics fitted on the training rows, and the augmentation policy (which
    training applies to each batch)."""
    from modelyard import stages

    typer.echo(stages.prepare(_config(params, set_)))


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
    log.info("pipeline: %s on %s -> registered as %s%s", cfg.model.name, cfg.data.dataset, cfg.task_name,
             f" (recipe {cfg.recipe})" if cfg.recipe else "")
    with open_run(cfg, params_path=params) as run:
        for stage in (stages.fetch, stages.validate, stages.prepare, stages.train, stages.evaluate, stages.register):
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

    from modelyard.registry import versions

    cfg = load_config(params)
    uri = cfg.registry.resolved_tracking_uri()
    try:
        was, now = versions.rollback(uri, task, champion_alias=cfg.registry.champion_alias)
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
def tune(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    recipe: RecipeOpt = None,
    space: Annotated[str | None, typer.Option(help="Settings to search, as JSON or a YAML/JSON file, merged over "
                                              "the family's space: '{\"train.learning_rate\": {\"loguniform\": "
                                              "[0.01, 0.3]}}' (null drops one).")] = None,
    trials: Annotated[int, typer.Option(min=1, help="Configurations to try.")] = 12,
    concurrency: Annotated[str, typer.Option(help="Trials at once, or auto.")] = "auto",
    cpus_per_trial: Annotated[int, typer.Option(min=1)] = 1,
    scheduler: Annotated[str, typer.Option(help="asha (stop trailing trials) or fifo.")] = "asha",
    time_budget_min: Annotated[float, typer.Option(min=0, help="Minutes the search may take (0: no limit).")] = 45,
    engine: Annotated[str, typer.Option(help="auto, local (the worker inside the trial) or ray_train.")] = "auto",
    register: Annotated[bool, typer.Option(help="Retrain the winner, evaluate it and register it as challenger "
                                                "through the promotion gate.")] = True,
) -> None:
    """Search the task's hyper-parameters with Ray Tune (Optuna's sampler, ASHA); the report goes to
    artifacts/<dataset>/<family>/search/ and MLflow (a parent run, a child run per trial)."""
    from pydantic import ValidationError

    from modelyard import stages
    from modelyard.runs import open_run
    from modelyard.tuning.config import SearchConfig
    from modelyard.tuning.space import SearchSpaceError, resolve_space

    cfg = _config(params, set_, recipe)
    try:
        settings = SearchConfig(trials=trials, concurrency=int(concurrency) if concurrency.isdigit() else concurrency,
                                cpus_per_trial=cpus_per_trial, scheduler=scheduler,
                                time_budget_min=time_budget_min or None, engine=engine)
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None
    parsed = _space_option(space)
    try:
        resolve_space(cfg, parsed)  # refused before anything runs
    except SearchSpaceError as exc:
        raise typer.BadParameter(str(exc), param_hint="--space") from None
    with open_run(cfg, params_path=params) as run:
        for stage in (stages.fetch, stages.validate, stages.prepare):
            stage(run.cfg)
        result = stages.search(run.cfg, settings, parsed)
        typer.echo(result.report_md)
        if not register:
            return
        winner, tags = stages.winner_config(run.cfg, result)
        stages.prepare(winner)
        stages.train(winner, tags=tags)
        stages.evaluate(winner)
        summary = stages.register(winner)
        typer.echo(summary["report"])
        run.publish()


def _space_option(value: str | None) -> dict[str, Any] | None:
    """--space: inline JSON, or a YAML/JSON file."""
    if not value:
        return None
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise typer.BadParameter(f"not JSON/YAML: {exc}", param_hint="--space") from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("expected a mapping of setting -> distribution", param_hint="--space")
    return parsed


export_app = typer.Typer(no_args_is_help=True, help="Export a registered version for another server.")
app.add_typer(export_app, name="export")


@export_app.command("torchserve")
def export_torchserve(
    task: Annotated[str, typer.Argument(help="The registered model name (its champion unless --version).")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    version: Annotated[str | None, typer.Option(help="This version instead of the champion.")] = None,
    out: Annotated[Path, typer.Option(help="Where the .mar goes (TorchServe's model store).")] = Path(
        "artifacts/torchserve"),
) -> None:
    """A TorchServe archive (.mar) of a registered version, built with torch-model-archiver: weights, model.json,
    modelyard's code and a handler that decodes and predicts as Ray Serve's endpoint does."""
    from modelyard.inference.torchserve import export_archive

    cfg = _config(params, set_)
    try:
        archive = export_archive(cfg.registry.resolved_tracking_uri(), task, out, version=version,
                                 alias=cfg.registry.champion_alias)
    except LookupError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"{archive}\nserve it: torchserve --start --ncs --model-store {out} --models {task}={archive.name}\n"
               f"then:     curl -H \"Authorization: Bearer <inference key from key_file.json>\" "
               f"http://127.0.0.1:8080/predictions/{task} -T <image file>")


@app.command("predict-batch")
def predict_batch(
    task: Annotated[str, typer.Argument(help="The registered model name whose champion predicts.")],
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="A folder of images, a JSON-lines file of "
                                               "records ({\"text\": ...} / {\"series\": ...}), or a Parquet file.")],
    output_path: Annotated[Path, typer.Argument(metavar="OUTPUT", help="The Parquet folder to write.")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    version: Annotated[str | None, typer.Option(help="This version instead of the champion.")] = None,
    workers: Annotated[int | None, typer.Option(help="Actors holding the model (default: one per CPU).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Predict every record of INPUT with the task's champion (Ray Data, an actor pool), one Parquet row each."""
    from modelyard.inference.batch import predict_batch as run

    cfg = _config(params, set_)
    try:
        summary = run(cfg.registry.resolved_tracking_uri(), task, input_path, output_path, version=version,
                      alias=cfg.registry.champion_alias, backend=cfg.serve.backend, workers=workers,
                      batch_size=batch_size, overwrite=overwrite)
    except (FileNotFoundError, FileExistsError, LookupError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(json.dumps(summary.to_dict()))


@app.command("feedback-set")
def feedback_set(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    task: Annotated[str | None, typer.Option(help="The registered model name (default: params.yaml's task).")] = None,
) -> None:
    """Build the task's feedback data set from the labels posted to /feedback and the traffic log's inputs,
    under <data_dir>/feedback/<task>, and `dvc add` it; train on it with `-S data.feedback=<that path>`."""
    from modelyard.monitoring.retraining import task_config, with_feedback

    cfg = _config(params, set_)
    try:
        cfg = task_config(cfg, task or cfg.task_name)  # another task's dataset and classes: its champion's run's
        _, summary = with_feedback(cfg, cfg.task_name)
    except (LookupError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if summary is None:
        raise typer.BadParameter(f"no labelled input of {task or cfg.task_name} under {cfg.traffic_dir}")
    typer.echo(json.dumps(summary))


@app.command()
def samples(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, recipe: RecipeOpt = None) -> None:
    """Write one real test input per class under data/samples/<dataset>/, as a file to send to the endpoint."""
    from modelyard import stages

    paths = stages.samples(_config(params, set_, recipe))
    typer.echo(f"{len(paths)} samples in {paths[0].parent if paths else '-'}/")


@app.command("try")
def try_it(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, recipe: RecipeOpt = None) -> None:
    """Print where the task is served and a curl command that sends it one of its samples."""
    from modelyard import stages
    from modelyard.data.dataset import modality_of, read_metadata
    from modelyard.paths import TaskPaths

    cfg = _config(params, set_, recipe)
    paths = TaskPaths.of(cfg)
    base = f"http://{cfg.serve.host}:{cfg.serve.port}"
    samples = sorted(paths.samples_dir.glob("*")) or stages.samples(cfg)
    url = f"{base}{cfg.serve.route(cfg.task_name)}/predict"
    typer.echo(f"  Served tasks    {base}{cfg.serve.route_prefix}  (each at <task>/: POST predict, GET model, GET "
               f"health, docs)\n\nTry {cfg.task_name} with a real test input ({paths.samples_dir}/ has one per class):"
               f"\n  {modality_of(read_metadata(paths.dataset_dir)).request_example(samples[0], url)}\n"
               f"Roll the champion back: .venv/bin/modelyard rollback {cfg.task_name}    Stop everything: make down")


@app.command("show-config")
def show_config(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, recipe: RecipeOpt = None) -> None:
    """Print the resolved parameters, the model family's every field included."""
    from modelyard.models import family_config

    cfg = _config(params, set_, recipe)
    try:
        family = family_config(cfg.model)
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    doc = cfg.model_dump(mode="json", by_alias=True) | {"model": family.model_dump(mode="json")}
    typer.echo(yaml.safe_dump(doc, sort_keys=False) + f"# registered model name: {cfg.task_name}")


@app.command()
def recipes() -> None:
    """List the named recipes (dataset + model + training settings)."""
    from modelyard.recipes import RECIPES, recipe_overrides

    for name, recipe in RECIPES.items():
        sections = recipe_overrides(name)
        typer.echo(f"{name:28} {sections['data']['dataset']:16} {sections['model']['name']:9} {recipe['description']}")


@app.command()
def datasets() -> None:
    """List the registered datasets: modality, classes, sources (tried in this order), augmentation defaults."""
    from modelyard.data.datasets import dataset_names, get_dataset

    for name in dataset_names():
        spec = get_dataset(name)
        typer.echo(f"{name:16} {spec.modality:7} {len(spec.classes):3} classes, sources {' > '.join(spec.sources)}; "
                   f"augment {spec.augment}; {spec.description}")


@app.command()
def families() -> None:
    """List the model families and the modalities each one takes."""
    from modelyard.models import config_class, family_names

    for name in family_names():
        config = config_class(name)
        typer.echo(f"{name:10} {', '.join(config.modalities):12} {(config.__doc__ or '').strip().splitlines()[0]}")


if __name__ == "__main__":
    app()
