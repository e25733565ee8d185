"""ONNX export at registration: parity with PyTorch on real test rows, the preprocessing inside the graph,
dynamic batch (and sequence) axes, and a failed export reported instead of raised."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers.models import GRAY_28
from modelyard.artifact import ModelSpec, save_model_dir
from modelyard.data.dataset import load_split
from modelyard.data.datasets import get_dataset
from modelyard.inference import Predictor
from modelyard.inference.onnx_export import export_and_check
from modelyard.inference.onnx_runtime import ONNX_FILE, REPORT_FILE
from modelyard.modalities import get_modality
from modelyard.models import family_config


def image_model_dir(tmp_path, class_names):
    torch.manual_seed(0)
    spec = ModelSpec(family="cnn", args={"in_channels": 1, "num_classes": 10, "width": 8, "dropout": 0.0},
                     labels=class_names, preprocessing=GRAY_28.to_dict())
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
    assert "parity at registration" in ort_side.backend_note
    # The batch axis is dynamic: other batch sizes than the exported one, preprocessing inside the graph.
    for rows in (1, 7, 200):
        a = torch_side.predict_proba(test_sample.images[:rows])
        b = ort_side.predict_proba(test_sample.images[:rows])
        assert a.shape == b.shape == (rows, 10)
        assert np.abs(a - b).max() < 1e-4 and (a.argmax(1) == b.argmax(1)).all()


def test_the_tensorrt_backend_runs_the_export_on_tensorrt_or_says_why_not(tmp_path, class_names, test_sample):
    import onnxruntime as ort

    model_dir = image_model_dir(tmp_path, class_names)
    assert Predictor.from_dir(model_dir, backend="tensorrt").backend_note.startswith(
        "torch, not tensorrt: the model version was registered without an ONNX export")
    assert export_and_check(model_dir, test_sample.images[:64])["status"] == "ok"
    trt = Predictor.from_dir(model_dir, backend="tensorrt", threads=1)
    reference = Predictor.from_dir(model_dir, backend="onnxruntime", threads=1).predict_proba(test_sample.images)
    got = trt.predict_proba(test_sample.images)
    if "TensorrtExecutionProvider" in ort.get_available_providers():  # onnxruntime-gpu with TensorRT, a GPU
        assert trt.backend == "tensorrt" and "parity at registration" in trt.backend_note
        assert np.abs(got - reference).max() < 1e-2 and (got.argmax(1) == reference.argmax(1)).mean() > 0.99
    else:
        assert trt.backend == "onnxruntime"
        assert trt.backend_note.startswith(f"onnxruntime on the CPU, not tensorrt: TensorRT is unavailable: this "
                                           f"onnxruntime {ort.__version__} offers ")
        assert "TensorrtExecutionProvider" not in trt.backend_note.split(" offers ")[1].split(" (")[0]
        assert np.array_equal(got, reference)  # the same export on the same provider


def test_an_export_that_cannot_run_is_reported_not_raised(tmp_path, class_names):
    model_dir = image_model_dir(tmp_path, class_names)
    report = export_and_check(model_dir, np.zeros((2, 5, 5, 1), dtype=np.uint8))  # not what the model takes
    assert report["status"] == "failed" and report["reason"].startswith("InvalidInputError")
    assert json.loads((model_dir / REPORT_FILE).read_text()) == report
    assert not (model_dir / ONNX_FILE).exists()


@pytest.mark.parametrize("model", [{"name": "lstm", "hidden": 32, "embedding_dim": 32},
                                   {"name": "bert", "max_length": 32}], ids=["lstm", "minilm"])
def test_text_export_has_dynamic_batch_and_sequence_axes(tmp_path, rt_polarity_dir, model):
    family = family_config(model)
    pre = get_modality("text").fit_preprocessor(family.preprocessing(), {}, get_dataset("rt_polarity").schema)
    spec = ModelSpec(family=family.name, args=family.builder_args(pre.model_input(), 2),
                     labels=["negative", "positive"], preprocessing=pre.to_dict())
    torch.manual_seed(0)
    model_dir = save_model_dir(spec.build(), spec, tmp_path / family.name)  # MiniLM's architecture, from its config
    sentences = load_split(rt_polarity_dir, "test").texts
    report = export_and_check(model_dir, sentences[:2])  # exported with 2 texts of one padded length
    assert report["status"] == "ok", report
    torch_side = Predictor.from_dir(model_dir)
    ort_side = Predictor.from_dir(model_dir, backend="onnxruntime", threads=1)
    long_review = " ".join(sentences[10:40])  # far past max_length: truncated
    texts = [*sentences[2:7], long_review]  # another batch size, other lengths
    assert [p.extra["truncated"] for p in torch_side.predict(texts)] == [False] * 5 + [True]
    a, b = torch_side.predict_proba(texts), ort_side.predict_proba(texts)
    assert np.abs(a - b).max() < 1e-4 and (a.argmax(1) == b.argmax(1)).all()
