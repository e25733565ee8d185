"""Serving on ONNX Runtime: the torch fallback (with the reason) when a version has no usable export, and an
onnxruntime that writes nothing in the user's home once the project's environment is set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers.models import GRAY_28
from modelyard.artifact import ModelSpec, save_model_dir
from modelyard.inference import Predictor
from modelyard.inference.onnx_runtime import ONNX_FILE, REPORT_FILE, usable


@pytest.fixture
def model_dir(tmp_path, class_names):
    torch.manual_seed(0)
    spec = ModelSpec(family="cnn", args={"in_channels": 1, "num_classes": 10, "width": 8, "dropout": 0.0},
                     labels=class_names, preprocessing=GRAY_28.to_dict())
    return save_model_dir(spec.build(), spec, tmp_path / "cnn")


def test_without_a_usable_export_serving_stays_on_torch_and_says_why(model_dir, test_sample):
    assert usable(model_dir) == (False, "the model version was registered without an ONNX export")
    (model_dir / REPORT_FILE).write_text(json.dumps({"status": "failed", "reason": "Unsupported: op X"}))
    assert usable(model_dir) == (False, "its ONNX export failed at registration: Unsupported: op X")
    predictor = Predictor.from_dir(model_dir, backend="onnxruntime")
    assert predictor.backend == "torch" and "Unsupported: op X" in predictor.backend_note
    assert predictor.predict_proba(test_sample.images[:3]).shape == (3, 10)  # still serves, on torch


def test_a_report_that_says_ok_without_the_export_beside_it_is_not_usable(model_dir):
    (model_dir / REPORT_FILE).write_text(json.dumps({"status": "ok", "max_abs_logit_diff": 0.0,
                                                     "argmax_agreement": 1.0, "rows": 8}))
    assert not (model_dir / ONNX_FILE).exists()
    ok, why = usable(model_dir)
    assert not ok and "failed at registration" in why
    assert Predictor.from_dir(model_dir, backend="onnxruntime").backend == "torch"


CI_VARIABLES = ("CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "CODEBUILD_BUILD_ID", "BUILDKITE",
                "TEAMCITY_VERSION", "BITBUCKET_BUILD_NUMBER")  # onnxruntime stays quiet where it sees one


@pytest.mark.parametrize("configured", [False, True])
def test_onnxruntime_writes_nothing_in_home_once_the_environment_is_configured(tmp_path, configured):
    """On a user's machine (no CI variables) onnxruntime 1.32 writes a device id and a telemetry event store
    under ~/.cache/Microsoft at import; the project's environment switches that off."""
    env = {k: v for k, v in os.environ.items() if k not in (*CI_VARIABLES, "ORT_DISABLE_TELEMETRY")}
    env["HOME"] = str(tmp_path)
    setup = "from modelyard.runtime import configure_environment; configure_environment(); " if configured else ""
    subprocess.run([sys.executable, "-c", setup + "import onnxruntime"], env=env, check=True, timeout=120)
    written = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    if configured:
        assert not written, written
    else:  # what the switch is for: without it, onnxruntime does write there
        assert any("Microsoft" in p for p in written), written
