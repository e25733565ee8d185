"""Searches end to end on real data (JapaneseVowels: 270 training series, so a trial takes seconds):

- the `hyperparameter-search` flow through Prefect (a test API server), as its deployment runs it: Ray Tune
  with Optuna and ASHA on a local Ray, every trial an MLflow child run of the search's run, the winner
  retrained, registered as challenger and put through the promotion gate; then a second search whose winner
  is worse, which the gate keeps out;
- Ray Train V2 inside Tune (`engine: ray_train`): a trial ASHA stops releases its workers, or the next trial,
  which needs every CPU, would never start.
"""

from __future__ import annotations

import time

import pytest

from helpers.config import small_config, write_params
from modelyard.paths import TaskPaths

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPACE = {"train.epochs": {"int": [4, 6]}, "train.learning_rate": {"loguniform": [1e-5, 1e-2]}}


@pytest.fixture(scope="module")
def searches(prefect_api, tmp_path_factory):
    """Two flow runs on one registry: a real search, then one whose winner trains a single epoch."""
    from pipelines.search import hyperparameter_search

    tmp = tmp_path_factory.mktemp("search")
    cfg = small_config(tmp, recipe="vowels-lstm", train={"progress_every_s": 60.0})
    params = write_params(cfg, tmp / "params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_PARAMS", str(params))
        first = hyperparameter_search(
            recipe="vowels-lstm", space=SPACE, return_state=True,
            search={"trials": 5, "grace_epochs": 1, "reduction_factor": 2, "time_budget_min": 10})
        worse = hyperparameter_search(
            recipe="vowels-lstm", return_state=True,
            space={"train.epochs": {"choice": [1]}, "train.learning_rate": {"loguniform": [1e-5, 2e-5]}},
            search={"trials": 2, "scheduler": "fifo", "time_budget_min": 5})
    return cfg, first, worse


def test_the_search_flow_logs_a_parent_run_with_a_child_per_trial_and_asha_stops_some(searches):
    from mlflow.tracking import MlflowClient

    cfg, first, _ = searches
    assert first.is_completed(), first
    result = first.result()
    search = result["search"]
    assert search["trials"] == 5 and search["stopped_early"] >= 1, search
    client = MlflowClient(cfg.registry.resolved_tracking_uri())
    parent = client.get_run(search["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["modelyard.stage"] == "search"
    assert parent.data.metrics["search/best_val_accuracy"] == pytest.approx(search["best"]["val_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/report.md", "search/scores.png", "search/curves.png", "search/trials.csv"} <= artifacts
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 5
    reasons = {}
    for child in children:
        assert child.info.status == "FINISHED"
        assert set(SPACE) | {"model.hidden"} <= set(child.data.params), child.data.params
        epochs = client.get_metric_history(child.info.run_id, "val/accuracy")
        assert [m.step for m in epochs] == list(range(1, len(epochs) + 1))
        planned = int(child.data.params["train.epochs"])
        status = child.data.tags["modelyard.search.status"]
        assert (status == "completed") == (len(epochs) == planned), (status, len(epochs), planned)
        reasons[child.data.tags["modelyard.search.trial"]] = child.data.tags["modelyard.search.stop_reason"]
    assert any("stopped by ASHA after epoch" in r for r in reasons.values()), reasons


def test_the_winner_is_retrained_registered_as_challenger_and_the_gate_decides(searches):
    from mlflow.tracking import MlflowClient

    cfg, first, worse = searches
    result = first.result()
    name, version = cfg.task_name, result["registry"]["version"]
    client = MlflowClient(cfg.registry.resolved_tracking_uri())
    registered = client.get_model_version(name, version)
    assert registered.tags["modelyard.search.run_id"] == result["search"]["parent_run_id"]
    assert registered.tags["modelyard.search.trial"] == result["search"]["best"]["trial"]
    # Retrained with the winner's settings: its training run carries them.
    train_run = client.get_run(registered.run_id)
    for key, value in result["search"]["best"]["settings"].items():
        assert str(train_run.data.params[key]) == str(value), key
    assert result["registry"]["promoted"] is True and "no champion yet" in result["registry"]["reason"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == str(version)
    assert result["test"]["accuracy"] > 0.5  # 370 real test series, a few epochs; chance is 0.11

    assert worse.is_completed(), worse
    second = worse.result()["registry"]
    assert second["promoted"] is False and second["alias"] == "challenger", second
    assert f"champion v{version}'s" in second["reason"], second["reason"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == str(version)  # the gate kept it out
    assert str(client.get_model_version_by_alias(name, "challenger").version) == str(second["version"])


def test_the_search_report_is_a_prefect_artifact_and_published_with_the_task(searches):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    cfg, _, worse = searches
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["search-report"])))
    assert found and "Trials, best first" in found[-1].data
    report = TaskPaths.of(cfg).search_dir / "report"
    assert (report / "scores.png").stat().st_size > 10_000 and (report / "curves.png").stat().st_size > 10_000
    assert worse.result()["search"]["best"]["trial"] in (report / "report.md").read_text()  # the last search's


def test_a_trial_asha_stops_releases_its_ray_train_workers(tmp_path):
    """Each trial's TorchTrainer needs both CPUs of this machine; the trials run one at a time. A stopped
    trial whose workers or placement group outlived it would leave the next trial waiting forever (the search
    would end on its time budget with trials that never reported)."""
    import ray

    from modelyard import stages
    from modelyard.runtime import connect_ray
    from modelyard.tuning.config import SearchConfig
    from modelyard.tuning.search import run_search

    cfg = small_config(tmp_path, recipe="vowels-lstm", train={"progress_every_s": 60.0})
    for stage in (stages.fetch, stages.validate, stages.prepare):
        stage(cfg)
    paths = TaskPaths.of(cfg)
    connect_ray()  # ours, so it can be looked at after the search
    try:
        cpus = ray.cluster_resources()["CPU"]
        settings = SearchConfig(trials=4, concurrency=1, cpus_per_trial=int(cpus), engine="ray_train",
                                grace_epochs=1, reduction_factor=2, time_budget_min=8)
        result = run_search(cfg, {"train.epochs": {"choice": [4]}, "train.learning_rate": {"loguniform": [1e-5, 1e-2]}},
                            settings, paths.dataset_dir, paths.prepared_dir, tmp_path / "search")
        assert result.engine == "ray_train" and result.concurrency == 1
        trials = [(t.trial_id, t.started_s, t.seconds, t.reason) for t in result.trials]
        assert len(result.trials) == 4 and all(t.history for t in result.trials), trials
        stopped = [t for t in result.trials if "stopped by ASHA" in t.reason]
        assert stopped, trials
        # A trial started after one ASHA stopped had ended, on the CPUs that one's workers held.
        assert any(later.started_s >= t.started_s + t.seconds for t in stopped for later in result.trials), trials
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ray.available_resources().get("CPU", 0) == cpus
        live = [pg for pg in ray.util.placement_group_table().values() if pg["state"] == "CREATED"]
        assert not live, live
    finally:
        ray.shutdown()
