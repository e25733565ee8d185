"""Registered versions in a real MLflow registry (sqlite): loaded by alias, loaded where the project is not
installed, downloaded and cleaned up; with real models trained on real data."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.models import make_model, register
from helpers.paths import REPO
from modelyard.registry import versions

pytestmark = pytest.mark.integration


def test_loading_by_alias_returns_the_registered_weights(tmp_path, small_dataset_dir, class_names, test_sample):
    from modelyard.inference import Predictor

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    good = make_model(tmp_path, "good", small_dataset_dir, class_names, train_epochs=1)
    register(uri, "m", good, small_dataset_dir, "hash-A", np.ascontiguousarray(test_sample.images[:2]))
    model_dir, info = versions.download_model_dir(uri, "m", alias="champion", dst_dir=tmp_path / "dl")
    assert info.version == "1" and "champion" in info.aliases
    a = Predictor.from_dir(good).predict_proba(test_sample.images)
    b = Predictor.from_dir(model_dir).predict_proba(test_sample.images)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(LookupError, match="no alias 'gold'"):
        versions.download_model_dir(uri, "m", alias="gold", dst_dir=tmp_path / "dl2")


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

    from modelyard.inference import Predictor

    repo = str(REPO)
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
    with versions.fetched_model_dir(uri, "m", alias="champion") as (fetched, _):
        assert (fetched / "model.json").is_file()
    assert not fetched.exists()
    assert [p.name for p in scratch.iterdir()] == []
