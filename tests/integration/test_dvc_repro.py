"""`dvc repro` on a fresh copy of the repository, with the embedded defaults (no server running): every
stage runs, a second repro skips them all, `dvc metrics show` prints the test metrics, `dvc push` works,
and `dvc exp run -S recipe=...` trains and registers another task (a text one: another dataset, another
family, edits given beside the recipe winning over it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = ["fetch", "validate", "augment", "train", "evaluate", "register"]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def clone(fashion_mnist_dir, tmp_path_factory):
    """A git clone of this checkout's HEAD plus the working tree's changes, with small parameters."""
    tmp = tmp_path_factory.mktemp("dvc")
    repo = tmp / "modelyard"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PREFECT_API_URL"):
        env.pop(var, None)
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo, env)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(train_limit=3000, test_limit=500)
    params["train"].update(epochs=1, num_workers=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The raw download is shared with the other tests; the remote is a local directory beside the clone.
    (repo / "data" / "raw").mkdir(parents=True, exist_ok=True)
    shutil.copytree(fashion_mnist_dir.parent / "raw" / "fashion_mnist", repo / "data" / "raw" / "fashion_mnist")
    run(["dvc", "remote", "modify", "local", "url", str(tmp / "remote")], repo, env)
    return repo, env


def test_repro_runs_every_stage_then_skips_them_all(clone):
    repo, env = clone
    first = run(["dvc", "repro"], repo, env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout, first.stdout
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    second = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in second.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in second.stdout, second.stdout

    metrics = run(["dvc", "metrics", "show", "--json"], repo, env)
    shown = json.loads(metrics.stdout)
    values = next(iter(shown.values()))["data"]["artifacts/metrics.json"]["data"]["test"]
    # One epoch of 2,700 images, all of it in the learning-rate warm-up: well above chance (0.10), not more.
    assert values["count"] == 500 and 0.2 < values["accuracy"] <= 1.0

    registration = json.loads((repo / "artifacts/register/registration.json").read_text())
    assert registration["alias"] == "champion" and (repo / "mlflow" / "mlflow.db").is_file()

    # Lineage: the dataset hash logged to MLflow is the one dvc.lock records.
    import mlflow.tracking

    client = mlflow.tracking.MlflowClient(f"sqlite:///{repo / 'mlflow/mlflow.db'}")
    tags = client.get_run(registration["run_id"]).data.tags
    fetch_outs = {o["path"]: o["md5"] for o in lock["stages"]["fetch"]["outs"]}
    assert tags["dvc.md5.dataset"] == fetch_outs["data/fashion_mnist"]


def test_push_to_the_local_remote(clone):
    repo, env = clone
    pushed = run(["dvc", "push"], repo, env)
    assert "pushed" in pushed.stdout or "Everything is up to date" in pushed.stdout
    remote_files = [p for p in (repo.parent / "remote").rglob("*") if p.is_file()]
    assert len(remote_files) >= 5
    status = run(["dvc", "status", "--cloud"], repo, env)
    assert "up to date" in status.stdout.lower() or "in sync" in status.stdout.lower()


def test_exp_run_with_a_text_recipe_names_the_dataset_to_set_then_trains_it(clone, rt_polarity_dir):
    repo, env = clone
    shutil.copytree(rt_polarity_dir.parent / "raw" / "rt_polarity", repo / "data" / "raw" / "rt_polarity",
                    dirs_exist_ok=True)
    refused = subprocess.run(["dvc", "exp", "run", "-S", "recipe=rt-lstm"], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=900)
    assert refused.returncode != 0
    assert "run `dvc exp run -S recipe=rt-lstm -S data.dataset=rt_polarity`" in refused.stdout + refused.stderr
    run(["dvc", "exp", "run", "-S", "recipe=rt-lstm", "-S", "data.dataset=rt_polarity", "-S", "train.epochs=2",
         "-S", "augment.token_delete_prob=0.1"], repo, env)
    registration = json.loads((repo / "artifacts/register/registration.json").read_text())
    assert registration["name"] == "rt-polarity-lstm" and registration["alias"] == "champion"
    history = json.loads((repo / "artifacts/train/history.json").read_text())
    assert len(history) == 2  # the -S edit wins over the recipe's 8 epochs
    prepared = json.loads((repo / "data/prepared/rt_polarity/prepared.json").read_text())
    assert prepared["policy"] == {"token_delete_prob": 0.1, "token_swap_prob": 0.0}
    model = json.loads((repo / "artifacts/train/model/model.json").read_text())
    assert model["family"] == "lstm" and model["preprocessing"]["kind"] == "text"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {o["path"] for o in lock["stages"]["fetch"]["outs"]} == {"data/raw/rt_polarity", "data/rt_polarity"}
    metrics = json.loads((repo / "artifacts/metrics.json").read_text())["test"]
    assert metrics["count"] == 500 and metrics["accuracy"] > 0.55  # 3,000 sentences, from scratch
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    assert "rt-lstm" in json.dumps(shown)  # the experiment records the recipe among its params
