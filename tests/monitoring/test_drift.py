"""The drift tests on real Fashion-MNIST answers (an MLP trained here): a version's reference profile on one part
of the test split against other real test images (no drift), and against the same kind of images inverted,
dimmed or brightened (drift, seen by each of the three tests); the monitor's report and plot; and a bad
comparison refused by name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.models import make_model
from modelyard.data.dataset import load_split
from modelyard.inference import Predictor
from modelyard.monitoring import drift, profile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def predictor(small_dataset_dir, class_names, tmp_path_factory):
    return Predictor.from_dir(make_model(tmp_path_factory.mktemp("m"), "mlp", small_dataset_dir, class_names,
                                         train_epochs=2))


@pytest.fixture(scope="module")
def test_images(small_dataset_dir):
    return load_split(small_dataset_dir, "test").images


def frame(predictor, images) -> pd.DataFrame:
    return pd.DataFrame(profile.reference(predictor, images, task="t", version="1"))


@pytest.fixture(scope="module")
def reference(predictor, test_images):
    return frame(predictor, test_images[:600])


def test_other_real_test_images_do_not_drift(predictor, reference, test_images):
    report = drift.compare(reference, frame(predictor, test_images[600:900]))
    assert [t.name for t in report.tests] == ["confidence", "predicted_class", "embedding"]
    assert not report.drifted, report.to_dict()
    assert report.score > report.alpha / 3


@pytest.mark.parametrize("shift", ["inverted", "dimmed", "brightened"])
def test_shifted_real_images_drift_in_every_test(predictor, reference, test_images, shift):
    images = test_images[600:900].astype(np.int16)
    shifted = {"inverted": 255 - images, "dimmed": images * 0.6, "brightened": images + 40}[shift]
    report = drift.compare(reference, frame(predictor, np.clip(shifted, 0, 255).astype(np.uint8)))
    assert report.drifted
    embedding = next(t for t in report.tests if t.name == "embedding")
    assert embedding.drifted and embedding.p_value < report.alpha / 3  # the projected embedding alone sees it


def test_the_embedding_is_the_projected_penultimate_layer(predictor, test_images):
    from modelyard.monitoring.embedding import DIM, classifier_head, projection

    predictions, embeddings = predictor.predict_with_embeddings(test_images[:8])
    head = classifier_head(predictor.model, 10)
    assert head is predictor.model.net[-1] and embeddings.shape == (8, DIM)
    seen = []
    handle = head.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    predictor.predict_proba(test_images[:8])
    handle.remove()
    assert np.allclose(embeddings, (seen[0] @ projection(head.in_features)).numpy(), atol=1e-5)
    assert [p.index for p in predictions] == list(predictor.predict_proba(test_images[:8]).argmax(1))


def test_nothing_to_compare_is_refused_by_name(reference):
    with pytest.raises(ValueError, match="nothing to compare: 600 reference rows, 0 window rows"):
        drift.compare(reference, reference.iloc[:0])
