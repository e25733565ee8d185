"""Champion/challenger promotion against a real MLflow registry (sqlite), with real models and real data."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model, register

from modelyard import registry

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
    assert registry.get_version(uri, "m", alias="champion").version == first.version
    assert registry.get_version(uri, "m", alias="challenger").version == second.version

    # Same model as the champion, so equally good; the champion's own score came from another test set,
    # so it is re-scored on this one before comparing, and a tie promotes.
    third = register(uri, "m", good, small_dataset_dir, "hash-B", sample)
    assert "re-scored" in third.reason
    assert third.champion_value == pytest.approx(third.challenger_value)
    assert third.promoted and registry.get_version(uri, "m", alias="champion").version == third.version


def test_loading_by_alias_returns_the_registered_weights(tmp_path, small_dataset_dir, class_names, test_sample):
    from modelyard.inference import Predictor

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    good = make_model(tmp_path, "good", small_dataset_dir, class_names, train_epochs=1)
    register(uri, "m", good, small_dataset_dir, "hash-A", np.ascontiguousarray(test_sample.images[:2]))
    model_dir, info = registry.download_model_dir(uri, "m", alias="champion", dst_dir=tmp_path / "dl")
    assert info.version == "1" and "champion" in info.aliases
    a = Predictor.from_dir(good).predict_proba(test_sample.images)
    b = Predictor.from_dir(model_dir).predict_proba(test_sample.images)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(LookupError, match="no alias 'gold'"):
        registry.download_model_dir(uri, "m", alias="gold", dst_dir=tmp_path / "dl2")


# Runs in a fresh interpreter that cannot import the project: the editable install's finder is removed and
# no sys.path entry points into the checkout, so `modelyard` can only come from the registered model.
ISOLATED_LOAD = r"""
import importlib.util, json, sys
repo = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in repr(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in repr(h)]
sys.path[:] = [p for p in sys.path if p and p != repo and not p.startswith(repo + "/src")]  # keep the venv
sys.path_importer_cache.clear()
assert importlib.util.find_spec("modelyard") is None, "the project is still importable"
import numpy as np
import mlflow.pyfunc
mlflow.set_tracking_uri(sys.argv[2]); mlflow.set_registry_uri(sys.argv[2])
model = mlflow.pyfunc.load_model(sys.argv[3])
out = model.predict(np.load(sys.argv[4]))
print(json.dumps({"index": out["index"].tolist(), "modelyard": sys.modules["modelyard"].__file__}))
"""


def test_the_registered_model_loads_where_the_project_is_not_installed(tmp_path, small_dataset_dir, class_names,
                                                                        test_sample):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from modelyard.inference import Predictor

    repo = str(Path(__file__).resolve().parents[2])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model_dir = make_model(tmp_path, "good", small_dataset_dir, class_names, train_epochs=1)
    register(uri, "m", model_dir, small_dataset_dir, "hash-A", np.ascontiguousarray(test_sample.images[:2]))
    images = tmp_path / "images.npy"
    np.save(images, test_sample.images[:50])
    proc = subprocess.run([sys.executable, "-c", ISOLATED_LOAD, repo, uri, "models:/m@champion", str(images)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not answer["modelyard"].startswith(repo)  # the code came with the model...
    assert "/code/modelyard/" in answer["modelyard"]
    expected = Predictor.from_dir(model_dir).predict_proba(test_sample.images[:50]).argmax(axis=1)
    assert answer["index"] == expected.tolist()  # ...and predicts exactly as the trained model does


def test_model_downloads_for_scoring_and_serving_leave_no_temporary_directory(tmp_path, monkeypatch,
                                                                              small_dataset_dir, class_names,
                                                                              test_sample):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sample = np.ascontiguousarray(test_sample.images[:2])
    model_dir = make_model(tmp_path, "good", small_dataset_dir, class_names, train_epochs=0)
    register(uri, "m", model_dir, small_dataset_dir, "hash-A", sample)
    second = register(uri, "m", model_dir, small_dataset_dir, "hash-B", sample)  # re-scores the champion
    assert "re-scored" in second.reason
    with registry.fetched_model_dir(uri, "m", alias="champion") as (fetched, _):
        assert (fetched / "model.json").is_file()
    assert not fetched.exists()
    assert [p.name for p in scratch.iterdir()] == []
