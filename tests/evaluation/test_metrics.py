"""modelyard.evaluation.metrics: accuracy, macro precision/recall/F1 and the confusion matrix, checked by hand
and against scikit-learn on a real model's predictions of the real Fashion-MNIST test split."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.models import make_model
from modelyard.data.dataset import load_split
from modelyard.evaluation.metrics import classification_metrics, confusion_matrix
from modelyard.inference import Predictor


def test_confusion_matrix_counts_rows_as_truth():
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "accuracy", "macro_f1"),
    [
        ([0, 1, 2, 0], [0, 1, 2, 0], 1.0, 1.0),
        ([0, 0, 1, 1], [1, 1, 0, 0], 0.0, 0.0),
        # class 0: p=1/2 r=1/2 f=1/2; class 1: p=1/2 r=1/2 f=1/2 -> macro 0.5
        ([0, 0, 1, 1], [0, 1, 1, 0], 0.5, 0.5),
        # class 0: p=2/3 r=1 f=0.8; class 1: p=0 (never predicted) r=0 f=0 -> macro 0.4
        ([0, 0, 1], [0, 0, 0], 2 / 3, 0.4),
    ],
)
def test_accuracy_and_macro_f1_by_hand(y_true, y_pred, accuracy, macro_f1):
    labels = ["a", "b", "c"][: max(max(y_true), max(y_pred)) + 1]
    m = classification_metrics(np.array(y_true), np.array(y_pred), labels)
    assert m["accuracy"] == pytest.approx(accuracy)
    assert m["macro_f1"] == pytest.approx(macro_f1)
    assert m["count"] == len(y_true)


def test_per_class_scores_and_the_matrix_are_reported():
    m = classification_metrics(np.array([0, 0, 1]), np.array([0, 0, 0]), ["coat", "bag"])
    coat = {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert m["per_class"]["coat"] == pytest.approx(coat)
    assert m["per_class"]["bag"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["confusion_matrix"] == [[2, 0], [1, 0]]


def test_agrees_with_scikit_learn_on_a_real_models_predictions(tmp_path, small_dataset_dir, fashion_mnist_dir,
                                                               class_names):
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    model_dir = make_model(tmp_path, "mlp", small_dataset_dir, class_names, train_epochs=1)
    test = load_split(fashion_mnist_dir, "test")  # 10,000 real images the model has not seen
    y_true = test.labels
    y_pred = Predictor.from_dir(model_dir).predict_proba(test.images).argmax(axis=1)
    assert 0.5 < (y_true == y_pred).mean() < 0.95  # a real model, right and wrong often enough to tell
    m = classification_metrics(y_true, y_pred, class_names)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["macro_precision"] == pytest.approx(precision_score(y_true, y_pred, average="macro"))
    assert m["macro_recall"] == pytest.approx(recall_score(y_true, y_pred, average="macro"))
    assert m["confusion_matrix"] == sk_confusion_matrix(y_true, y_pred, labels=range(10)).tolist()
    assert sum(c["support"] for c in m["per_class"].values()) == 10000 == m["count"]


def test_empty_or_mismatched_input_is_refused():
    with pytest.raises(ValueError, match="empty"):
        classification_metrics(np.array([], dtype=int), np.array([], dtype=int), ["a"])
    with pytest.raises(ValueError, match="entries"):
        classification_metrics(np.array([0, 1]), np.array([0]), ["a", "b"])
