"""ONNX export at registration: parity with PyTorch on real test rows, the onnxruntime backend, and the
torch fallback (with the reason) when a version has no usable export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelyard.data.preprocess import ImagePreprocessor
from modelyard.inference import Predictor
from modelyard.inference.onnx import REPORT_FILE, export_and_check, usable
from modelyard.models.artifact import ModelSpec, save_model_dir
from modelyard.models.text import BertConfig, LSTMConfig

GRAY_28 = ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.286,), (0.353,))
SENTENCES = ["A gorgeous, witty, seductive movie.", "Dull.",
             "The story and the friendship proceeds in such a way that you're watching a soap opera.",
             "an utterly charming and hilarious film that reminded me of the best of the disney comedies"]


def image_model_dir(tmp_path, class_names):
    spec = ModelSpec(family="cnn", args={"width": 8, "dropout": 0.0}, labels=class_names,
                     preprocessing=GRAY_28.to_dict())
    return save_model_dir(spec.build(), spec, tmp_path / "cnn")


def test_image_export_matches_torch_and_serves_through_onnxruntime(tmp_path, class_names, test_sample):
    model_dir = image_model_dir(tmp_path, class_names)
    report = export_and_check(model_dir, test_sample.images[:64])
    assert report["status"] == "ok" and report["rows"] == 64
    assert report["max_abs_logit_diff"] < 1e-4 and report["argmax_agreement"] == 1.0
    assert json.loads((model_dir / REPORT_FILE).read_text()) == report
    torch_side = Predictor.from_dir(model_dir)
    ort_side = Predictor.from_dir(model_dir, backend="onnxruntime", threads=1)
    assert (torch_side.backend, ort_side.backend) == ("torch", "onnxruntime")
    # The batch axis is dynamic: other batch sizes than the exported one, preprocessing inside the graph.
    for rows in (1, 7, 200):
        a = torch_side.predict_proba(test_sample.images[:rows])
        b = ort_side.predict_proba(test_sample.images[:rows])
        assert a.shape == b.shape == (rows, 10)
        assert np.abs(a - b).max() < 1e-4 and (a.argmax(1) == b.argmax(1)).all()


def test_without_a_usable_export_serving_stays_on_torch_and_says_why(tmp_path, class_names, test_sample):
    model_dir = image_model_dir(tmp_path, class_names)
    assert usable(model_dir) == (False, "the model version was registered without an ONNX export")
    (model_dir / REPORT_FILE).write_text(json.dumps({"status": "failed", "reason": "Unsupported: op X"}))
    predictor = Predictor.from_dir(model_dir, backend="onnxruntime")
    assert predictor.backend == "torch" and "Unsupported: op X" in predictor.backend_note
    # An export that cannot run at all is reported, not raised.
    report = export_and_check(model_dir, np.zeros((2, 5, 5, 1), dtype=np.uint8))
    assert report["status"] == "failed" and report["reason"].startswith("InvalidInputError")
    assert not (model_dir / "model.onnx").exists()


@pytest.mark.parametrize("family", [LSTMConfig(hidden=32, embedding_dim=32), BertConfig(max_length=32)],
                         ids=["lstm", "minilm"])
def test_text_export_has_dynamic_batch_and_sequence_axes(tmp_path, family):
    pre = family.text_preprocessor()
    spec = ModelSpec(family=family.name, args=family.builder_args(None, 2), labels=["negative", "positive"],
                     preprocessing=pre.to_dict())
    model_dir = save_model_dir(spec.build(), spec, tmp_path / family.name)  # MiniLM's architecture, from its config
    report = export_and_check(model_dir, SENTENCES[:2])  # exported with 2 texts of one length
    assert report["status"] == "ok", report
    torch_side = Predictor.from_dir(model_dir)
    ort_side = Predictor.from_dir(model_dir, backend="onnxruntime", threads=1)
    texts = SENTENCES + ["a" * 3000]  # other batch size, other lengths, one truncated
    a, b = torch_side.predict_proba(texts), ort_side.predict_proba(texts)
    assert np.abs(a - b).max() < 1e-4 and (a.argmax(1) == b.argmax(1)).all()


CI_VARIABLES = ("CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "CODEBUILD_BUILD_ID", "BUILDKITE",
                "TEAMCITY_VERSION", "BITBUCKET_BUILD_NUMBER")  # onnxruntime stays quiet where it sees one


@pytest.mark.parametrize("configured", [False, True])
def test_onnxruntime_writes_nothing_in_home_once_the_environment_is_configured(tmp_path, configured):
    """On a user's machine (no CI variables) onnxruntime 1.32 writes a device id and a telemetry event store
    under ~/.cache/Microsoft at import; the project's environment switches that off."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in (*CI_VARIABLES, "ORT_DISABLE_TELEMETRY")}
    env["HOME"] = str(tmp_path)
    setup = "from modelyard.runtime import configure_environment; configure_environment(); " if configured else ""
    subprocess.run([sys.executable, "-c", setup + "import onnxruntime"], env=env, check=True, timeout=120)
    written = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    if configured:
        assert not written, written
    else:  # what the switch is for: without it, onnxruntime does write there
        assert any("Microsoft" in p for p in written), written
