import numpy as np
import pytest

from modelyard.evaluation.metrics import classification_metrics, confusion_matrix


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
    m = classification_metrics(np.array(y_true), np.array(y_pred), ["a", "b", "c"][: max(max(y_true), max(y_pred)) + 1])
    assert m["accuracy"] == pytest.approx(accuracy)
    assert m["macro_f1"] == pytest.approx(macro_f1)


def test_agrees_with_scikit_learn_on_real_sized_input():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, 5000)
    y_pred = np.where(rng.random(5000) < 0.8, y_true, rng.integers(0, 10, 5000))
    m = classification_metrics(y_true, y_pred, [str(i) for i in range(10)])
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["macro_precision"] == pytest.approx(precision_score(y_true, y_pred, average="macro"))
    assert m["macro_recall"] == pytest.approx(recall_score(y_true, y_pred, average="macro"))
    assert sum(c["support"] for c in m["per_class"].values()) == 5000


def test_empty_or_mismatched_input_is_refused():
    with pytest.raises(ValueError, match="empty"):
        classification_metrics(np.array([], dtype=int), np.array([], dtype=int), ["a"])
    with pytest.raises(ValueError, match="entries"):
        classification_metrics(np.array([0, 1]), np.array([0]), ["a", "b"])
