"""Search spaces as declared by the families and recipes, and what a search refuses; the ranking of trials and
how many run at once. No Ray here."""

from __future__ import annotations

import math

import pytest

from helpers.paths import REPO
from modelyard.config import load_config
from modelyard.models import family_names
from modelyard.recipes import RECIPES
from modelyard.tuning.config import SearchConfig
from modelyard.tuning.records import TrialRecord, rank
from modelyard.tuning.search import choose_engine, trial_resources
from modelyard.tuning.space import SearchSpaceError, apply, family_space, overrides, resolve_space

# One recipe per family: each family's space is checked against a config that trains it.
RECIPE_OF = {}
for _name, _recipe in RECIPES.items():
    RECIPE_OF.setdefault(_recipe["model"]["name"], _name)


def cfg_of(recipe: str, **sections):
    return load_config(REPO / "params.yaml", {"recipe": recipe, **sections})


@pytest.mark.parametrize("family", family_names())
def test_every_family_declares_a_space_whose_every_corner_is_a_valid_run(family):
    space = family_space(family)
    assert "train.learning_rate" in space, family
    recipe = RECIPE_OF.get(family)
    if recipe is None:
        pytest.skip(f"no recipe trains {family}")
    resolve_space(cfg_of(recipe))  # checks both ends of each setting against the family and the dataset


def test_a_recipes_own_space_replaces_the_familys_and_a_callers_merges_over_it():
    cfg = cfg_of("rt-lstm")
    own = resolve_space(cfg)
    assert own == RECIPES["rt-lstm"]["search"] and own != family_space("lstm")
    merged = resolve_space(cfg, {"train.learning_rate": {"loguniform": [1e-3, 2e-3]}, "model.dropout": None})
    assert merged["train.learning_rate"] == {"loguniform": [1e-3, 2e-3]} and "model.dropout" not in merged
    assert resolve_space(cfg_of("fashion-mlp")) == family_space("mlp")


@pytest.mark.parametrize("space, words", [
    ({"optimizer.lr": {"uniform": [0, 1]}}, "is not a setting"),
    ({"train.seed": {"int": [1, 5]}}, "set by the search itself"),
    ({"train.learning_rate": {"normal": [0, 1]}}, "must be one of"),
    ({"train.learning_rate": {"uniform": [0.3, 0.1]}}, "low < high"),
    ({"train.learning_rate": {"loguniform": [0, 0.1]}}, "low > 0"),
    ({"train.epochs": {"int": [2.5, 4]}}, "whole numbers"),
    ({"model.dropout": {"uniform": [0.0, 1.5]}}, "model.dropout=1.49"),
    ({"model.depth": {"choice": [1, 99]}}, "model.depth=99"),
    ({"model.no_such_field": {"choice": [1]}}, "model.no_such_field=1"),
    ({"prepare.augment.hflip_prob": {"uniform": [0.0, 3.0]}}, "prepare.augment.hflip_prob"),
])
def test_a_bad_space_is_refused_naming_the_setting(space, words):
    with pytest.raises(SearchSpaceError, match="search space") as err:
        resolve_space(cfg_of("fashion-mlp"), space)
    assert words in str(err.value), str(err.value)


def test_a_trials_settings_nest_into_config_sections_and_apply():
    sample = {"train.learning_rate": 0.02, "model.hidden": 1024, "prepare.augment.hflip_prob": 0.25}
    assert overrides(sample) == {"train": {"learning_rate": 0.02}, "model": {"hidden": 1024},
                                 "prepare": {"augment": {"hflip_prob": 0.25}}}
    trial = apply(cfg_of("fashion-mlp"), sample)
    assert trial.train.learning_rate == 0.02 and trial.model.hidden == 1024
    assert trial.prepare.augment["hflip_prob"] == 0.25  # the trial's
    assert trial.prepare.augment["crop_padding"] == cfg_of("fashion-mlp").prepare.augment["crop_padding"]  # kept


def record(trial_id, status, accs, loss=0.5, epochs=3):
    return TrialRecord(trial_id, {}, epochs, [{"val/accuracy": a, "val/loss": loss, "epoch": i + 1}
                                              for i, a in enumerate(accs)], status, "", 1.0)


def test_trials_that_ran_their_schedule_rank_before_stopped_ones_and_ties_go_to_the_lower_loss():
    trials = [record("stopped-high", "stopped", [0.95]), record("done-low", "completed", [0.5, 0.6, 0.7]),
              record("done-tie-worse", "completed", [0.8, 0.8, 0.9], loss=0.4),
              record("done-tie-better", "completed", [0.7, 0.8, 0.9], loss=0.3),
              record("failed", "failed", []), record("stopped-low", "stopped", [0.2])]
    assert [t.trial_id for t in rank(trials)] == ["done-tie-better", "done-tie-worse", "done-low", "stopped-high",
                                                 "stopped-low", "failed"]
    assert math.isnan(record("x", "failed", []).score)


def test_trials_at_once_follow_the_resources_each_trial_needs():
    cfg = cfg_of("fashion-mlp")
    nodes = [{"CPU": 2.0}]
    assert choose_engine(cfg, SearchConfig()) == "local"
    assert choose_engine(cfg.with_overrides({"train": {"num_workers": 2}}), SearchConfig()) == "ray_train"
    assert trial_resources(cfg, SearchConfig(), "local", nodes) == ({"CPU": 1.0}, 2)
    assert trial_resources(cfg, SearchConfig(cpus_per_trial=2), "local", nodes) == ({"CPU": 2.0}, 1)
    assert trial_resources(cfg, SearchConfig(trials=1), "local", nodes)[1] == 1
    assert trial_resources(cfg, SearchConfig(concurrency=1), "local", [{"CPU": 8.0}])[1] == 1
    need, at_once = trial_resources(cfg, SearchConfig(), "ray_train", [{"CPU": 2.0}, {"CPU": 2.0}])
    assert need["CPU"] == 0 and at_once == 4  # the trainers' workers hold the CPUs, one each
    assert trial_resources(cfg, SearchConfig(), "local", [{"CPU": 2.0, "GPU": 1.0}]) == ({"CPU": 1.0, "GPU": 1.0}, 1)
    with pytest.raises(ValueError, match="more than the cluster has"):
        trial_resources(cfg, SearchConfig(cpus_per_trial=4), "local", nodes)
