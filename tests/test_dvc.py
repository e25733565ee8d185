"""DVC: each stage of dvc.yaml depends on all the code it runs and only that; a flow run of params.yaml's task
is recorded in DVC (dvc status clean, `dvc repro` skips every stage, the lineage in MLflow is dvc.lock's); `dvc
push` stores it; `dvc exp run` with a recipe of another task trains it into that task's own directory, leaving
the first task's outputs as they were.

The code a stage runs is found from the source, not listed by hand: the stage's function in modelyard.stages,
then every modelyard module it imports (at module level or inside functions), transitively (helpers/imports).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.imports import REPO, SRC, closure, imported_names, module_file

STAGES = ("fetch", "validate", "prepare", "train", "evaluate", "register")


def code_of_stage(stage: str) -> set[Path]:
    stages_py = SRC / "modelyard" / "stages.py"
    tree = ast.parse(stages_py.read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    # The stage's function, the helpers of stages.py it calls, and the module-level imports of stages.py.
    todo, seen = [stage], set()
    roots = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    while todo:
        fn = functions[todo.pop()]
        seen.add(fn.name)
        roots.append(fn)
        todo += [n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and n.id in functions and n.id not in seen]
    names = set().union(*(imported_names(r, "modelyard") for r in roots))
    return closure({m for m in names if m.split(".")[0] == "modelyard" and module_file(m)}) | {stages_py}


def deps_of(stage: str) -> list[Path]:
    return [REPO / d for d in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["deps"]]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_depends_on_all_the_code_it_executes(stage):
    deps = deps_of(stage)
    uncovered = sorted(str(f.relative_to(REPO)) for f in code_of_stage(stage)
                       if not any(f == d or d in f.parents for d in deps))
    assert not uncovered, f"dvc.yaml stage '{stage}' runs code it does not depend on: {uncovered}"


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_depends_on_code_it_does_not_run(stage):
    code = code_of_stage(stage)
    unused = [str(d.relative_to(REPO)) for d in deps_of(stage) if d.is_relative_to(SRC)
              and not any(f == d or d in f.parents for f in code)]
    assert not unused, f"editing {unused} would re-run '{stage}' for nothing"


def test_the_fetch_stage_runs_no_model_code_and_training_runs_the_families():
    fetch = {str(f.relative_to(SRC)) for f in code_of_stage("fetch")}
    assert not {f for f in fetch if f.startswith("modelyard/models") or f.startswith("modelyard/training")}
    assert SRC / "modelyard" / "models" / "cnn.py" in code_of_stage("train")  # found through the registry
    assert SRC / "modelyard" / "training" / "distributed.py" in code_of_stage("train")  # imported inside a function


def test_git_ignores_every_datasets_folder_and_what_dvc_writes_but_not_the_data_readme():
    """Fetching any dataset (the README's commands, `make bench`) must leave `git status` clean: a folder git
    does not ignore would be copied into the clones below, where DVC refuses to track what git tracks."""
    from modelyard.data.datasets import dataset_names

    paths = [f"data/{name}/dataset.json" for name in dataset_names()] + [
        f"data/raw/{name}/SOURCE" for name in dataset_names()] + [
        "data/samples/japanese_vowels/speaker-1.json", "artifacts/fashion_mnist/cnn/metrics.json"]
    check = subprocess.run(["git", "check-ignore", "--no-index", *paths, "data/README.md"], cwd=REPO,
                           capture_output=True, text=True)
    assert set(check.stdout.split()) == set(paths)  # every one ignored, and the README not


# ---- the real thing, in a copy of the repository -------------------------------------------------------

def run(cmd: list[str], cwd: Path, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def clone(fashion_mnist_dir, tmp_path_factory):
    """A git repository holding this checkout's files (committed or not), its params.yaml asking for a short run."""
    tmp = tmp_path_factory.mktemp("dvc")
    repo = tmp / "modelyard"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PREFECT_API_URL"):
        env.pop(var, None)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(train_limit=3000, test_limit=500)
    params["train"] = {"epochs": 3, "num_workers": 1, "warmup_epochs": 0.5}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["git", "init", "-q", "-b", "main"], [*git, "add", "-A"], [*git, "commit", "-qm", "copy"]):
        run(cmd, repo, env)
    # The raw download is shared with the other tests; the remote is a local directory beside the clone.
    shutil.copytree(fashion_mnist_dir.parent / "raw" / "fashion_mnist", repo / "data" / "raw" / "fashion_mnist")
    run(["dvc", "remote", "modify", "local", "url", str(tmp / "remote")], repo, env)
    return repo, env


@pytest.fixture(scope="module")
def flow_run(clone, prefect_api):
    """The training flow run as `make run` runs it: the deployment's form untouched, params.yaml the clone's."""
    from modelyard.forms import form_defaults
    from pipelines.training import training_pipeline

    repo, _ = clone
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        mp.setenv("MODELYARD_PARAMS", str(repo / "params.yaml"))
        state = training_pipeline(**form_defaults(repo / "params.yaml"), return_state=True)
    assert state.is_completed(), state
    return state.result()


@pytest.mark.integration
@pytest.mark.slow
def test_a_flow_run_of_params_yaml_is_recorded_and_repro_has_nothing_to_do(clone, flow_run):
    repo, env = clone
    status = run(["dvc", "status"], repo, env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    again = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in again.stdout
    assert all(f"Stage '{stage}' didn't change, skipping" in again.stdout for stage in STAGES), again.stdout

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env).stdout)
    values = next(iter(shown.values()))["data"]["artifacts/fashion_mnist/cnn/metrics.json"]["data"]["test"]
    # 3 epochs of 2,700 real images: a CNN that learned (chance is 0.10; the first epoch alone reaches ~0.6).
    assert values["count"] == 500 and values["accuracy"] >= 0.70, values
    assert values["accuracy"] == pytest.approx(flow_run["test"]["accuracy"])  # what the flow published

    # Lineage: the dataset hash logged to MLflow is the one dvc.lock records.
    import mlflow.tracking

    client = mlflow.tracking.MlflowClient(f"sqlite:///{repo / 'mlflow/mlflow.db'}")
    tags = client.get_run(flow_run["registry"]["run_id"]).data.tags
    fetch_outs = {o["path"]: o["md5"] for o in lock["stages"]["fetch"]["outs"]}
    assert tags["dvc.md5.dataset"] == fetch_outs["data/fashion_mnist"]


@pytest.mark.integration
@pytest.mark.slow
def test_push_stores_what_the_flow_produced(clone, flow_run):
    repo, env = clone
    run(["dvc", "push"], repo, env)
    status = run(["dvc", "status", "--cloud"], repo, env)
    assert "up to date" in status.stdout.lower() or "in sync" in status.stdout.lower(), status.stdout
    model = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]["outs"][0]["md5"]
    assert (repo.parent / "remote" / "files" / "md5" / model[:2] / model[2:]).is_file()  # the model dir's manifest


@pytest.mark.integration
@pytest.mark.slow
def test_exp_run_of_another_tasks_recipe_trains_it_apart(clone, flow_run, rt_polarity_dir):
    repo, env = clone
    shutil.copytree(rt_polarity_dir.parent / "raw" / "rt_polarity", repo / "data" / "raw" / "rt_polarity",
                    dirs_exist_ok=True)
    image_metrics = (repo / "artifacts/fashion_mnist/cnn/metrics.json").read_text()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run([*git, "add", "-A"], repo, env)  # dvc.lock and the .gitignore entries DVC wrote: what its user would do
    run([*git, "commit", "-qm", "the flow's run, recorded in dvc.lock"], repo, env)
    refused = run(["dvc", "exp", "run", "-S", "recipe=rt-lstm"], repo, env, ok=False)
    assert refused.returncode != 0
    assert ("run `dvc exp run -S recipe=rt-lstm -S data.dataset=rt_polarity -S model.name=lstm`"
            in refused.stdout + refused.stderr)
    run(["git", "checkout", "--", "params.yaml"], repo, env)  # DVC leaves a refused run's -S edits in the file
    run(["dvc", "exp", "run", "-S", "recipe=rt-lstm", "-S", "data.dataset=rt_polarity", "-S", "model.name=lstm",
         "-S", "data.train_limit=null", "-S", "train.epochs=4", "-S", "+prepare.augment.token_delete_prob=0.1"],
        repo, env)
    task = repo / "artifacts/rt_polarity/lstm"
    registration = json.loads((task / "register/registration.json").read_text())
    assert registration["name"] == "rt-polarity-lstm" and registration["alias"] == "champion"
    assert len(json.loads((task / "train/history.json").read_text())) == 4  # the -S edit won over the recipe's 3
    prepared = json.loads((task / "prepared/prepared.json").read_text())
    assert prepared["policy"] == {"token_delete_prob": 0.1, "token_swap_prob": 0.0}
    model = json.loads((task / "train/model/model.json").read_text())
    assert model["family"] == "lstm" and model["preprocessing"]["kind"] == "text"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {o["path"] for o in lock["stages"]["fetch"]["outs"]} == {"data/raw/rt_polarity", "data/rt_polarity"}
    metrics = json.loads((task / "metrics.json").read_text())["test"]
    # 9,510 real sentences, 4 epochs from scratch: a model that learned (chance is 0.50 on 500 test sentences).
    assert metrics["count"] == 500 and metrics["accuracy"] >= 0.66, metrics
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    assert "rt-lstm" in json.dumps(shown)  # the experiment records the recipe among its params
    # The workspace now holds the experiment's task; the image task's run is back from DVC's cache in one step.
    run(["git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock"], repo, env)
    run(["dvc", "checkout"], repo, env)
    assert (repo / "artifacts/fashion_mnist/cnn/metrics.json").read_text() == image_metrics
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo, env).stdout
