"""modelyard.inference.Predictor: a saved model with its fitted preprocessor predicts probabilities over its
labels, in the inputs' order, refuses inputs unlike its training data with a code, and says which backend
runs it; for images (real Fashion-MNIST) and texts (real Rotten Tomatoes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.models import GRAY_28, make_model
from modelyard.artifact import ModelSpec, save_model_dir
from modelyard.data.dataset import load_split
from modelyard.inference import InvalidInputError, Prediction, Predictor
from modelyard.modalities import get_modality
from modelyard.modalities.text import TextSchema
from modelyard.models.lstm import LSTMConfig


@pytest.fixture
def spec(class_names):
    return ModelSpec(family="cnn", args={"in_channels": 1, "num_classes": 10, "width": 8, "dropout": 0.0},
                     labels=class_names, preprocessing=GRAY_28.to_dict())


@pytest.fixture
def cnn_dir(tmp_path, spec):
    torch.manual_seed(0)
    return save_model_dir(spec.build(), spec, tmp_path / "cnn")


def test_predictor_scores_are_probabilities_over_the_labels(cnn_dir, spec, test_sample):
    predictor = Predictor.from_dir(cnn_dir)
    assert predictor.labels == spec.labels and predictor.preprocessor == GRAY_28
    assert predictor.backend == "torch"
    preds = predictor.predict(test_sample.images[:5])
    assert len(preds) == 5 and all(isinstance(p, Prediction) for p in preds)
    for p in preds:
        assert set(p.scores) == set(spec.labels)
        assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-4)
        assert p.label == spec.labels[p.index] == max(p.scores, key=p.scores.get)
        assert p.to_dict() == {"label": p.label, "index": p.index, "scores": p.scores}  # images add nothing


def test_probabilities_keep_the_inputs_order_whatever_the_batch_size(cnn_dir, test_sample):
    predictor = Predictor.from_dir(cnn_dir)
    whole = predictor.predict_proba(test_sample.images[:50])
    assert whole.shape == (50, 10) and np.allclose(whole.sum(1), 1, atol=1e-5)
    in_sevens = predictor.predict_proba(test_sample.images[:50], batch_size=7)
    np.testing.assert_allclose(in_sevens, whole, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(test_sample.images[10:11]), whole[10:11], atol=1e-6)
    assert not np.allclose(whole[0], whole[1])  # different images, different scores


def test_a_trained_model_predicts_the_real_test_images(tmp_path, small_dataset_dir, class_names, test_sample):
    """One epoch of an MLP on 4,000 real images: the Predictor feeds it exactly what training did."""
    model_dir = make_model(tmp_path, "mlp", small_dataset_dir, class_names, train_epochs=1)
    predictor = Predictor.from_dir(model_dir)
    predicted = np.array([p.index for p in predictor.predict(test_sample.images)])
    assert (predicted == test_sample.labels).mean() > 0.65  # chance is 0.10


@pytest.mark.parametrize(
    ("images", "code"),
    [(np.zeros((2, 27, 28), dtype=np.uint8), "bad_shape"),
     (np.zeros((2, 28, 28), dtype=np.float32), "bad_dtype")],
)
def test_predictor_refuses_batches_unlike_its_training_data(cnn_dir, images, code):
    with pytest.raises(InvalidInputError) as exc:
        Predictor.from_dir(cnn_dir).predict(images)
    assert exc.value.code == code


def test_onnxruntime_without_an_export_falls_back_to_torch_and_says_why(cnn_dir, test_sample):
    predictor = Predictor.from_dir(cnn_dir, backend="onnxruntime")
    assert predictor.backend == "torch"
    assert predictor.backend_note == ("torch, not onnxruntime: the model version was registered without an "
                                      "ONNX export")
    assert predictor.predict(test_sample.images[:1])[0].label in predictor.labels


def test_a_text_model_reads_texts_and_notes_truncation(tmp_path, rt_polarity_dir):
    test = load_split(rt_polarity_dir, "test")
    family = LSTMConfig(max_length=16, embedding_dim=16, hidden=16)
    pre = get_modality("text").fit_preprocessor(family.preprocessing(), {}, TextSchema())
    spec = ModelSpec(family="lstm", args=family.builder_args(pre.model_input(), 2),
                     labels=["negative", "positive"], preprocessing=pre.to_dict())
    torch.manual_seed(0)
    predictor = Predictor.from_dir(save_model_dir(spec.build(), spec, tmp_path / "lstm"))
    texts = test.texts[:40]
    preds = predictor.predict(texts)
    truncated = pre.tokenize(texts)[2]
    assert truncated.any() and not truncated.all()
    assert [p.extra["truncated"] for p in preds] == truncated.tolist()
    assert all(p.to_dict()["truncated"] == p.extra["truncated"] for p in preds)
    in_threes = predictor.predict_proba(texts, batch_size=3)
    np.testing.assert_allclose(in_threes, predictor.predict_proba(texts), atol=1e-5)
    with pytest.raises(InvalidInputError) as exc:
        predictor.predict([texts[0], "   "])
    assert exc.value.code == "empty_text"
