"""Champion/challenger promotion against a real MLflow registry (sqlite), with real models and real data."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.models import make_model, register
from modelyard.registry import versions

pytestmark = pytest.mark.integration


def test_only_a_better_or_equal_model_takes_the_champion_alias(tmp_path, small_dataset_dir, class_names, test_sample):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    good = make_model(tmp_path, "good", small_dataset_dir, class_names, train_epochs=2)
    bad = make_model(tmp_path, "bad", small_dataset_dir, class_names, train_epochs=0)
    sample = np.ascontiguousarray(test_sample.images[:2])

    first = register(uri, "m", good, small_dataset_dir, "hash-A", sample)
    assert first.promoted and first.alias == "champion" and first.reason == "no champion yet"

    second = register(uri, "m", bad, small_dataset_dir, "hash-A", sample)
    assert not second.promoted and second.alias == "challenger"
    assert second.champion_version == first.version and second.challenger_value < second.champion_value
    assert "recorded score on the same test set" in second.reason
    assert versions.get_version(uri, "m", alias="champion").version == first.version
    assert versions.get_version(uri, "m", alias="challenger").version == second.version

    # Same model as the champion, so equally good; the champion's own score came from another test set,
    # so it is re-scored on this one before comparing, and a tie promotes.
    third = register(uri, "m", good, small_dataset_dir, "hash-B", sample)
    assert "re-scored" in third.reason
    assert third.champion_value == pytest.approx(third.challenger_value)
    assert third.promoted and versions.get_version(uri, "m", alias="champion").version == third.version
