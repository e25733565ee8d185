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


@pytest.mark.integration
def test_texts_from_another_domain_drift_in_length_and_unknown_words(rt_polarity_dir, bbc_news_dir, tmp_path):
    """A text model's rows carry each text's length in tokens and its share of words the vocabulary does not
    know: other movie reviews look like its reference, BBC News articles (another domain) do not."""
    from modelyard.artifact import ModelSpec, save_model_dir
    from modelyard.data.datasets import get_dataset
    from modelyard.modalities import get_modality
    from modelyard.models import family_config

    family = family_config({"name": "lstm", "hidden": 16, "embedding_dim": 16})
    pre = get_modality("text").fit_preprocessor(family.preprocessing(), {}, get_dataset("rt_polarity").schema)
    spec = ModelSpec(family=family.name, args=family.builder_args(pre.model_input(), 2),
                     labels=["negative", "positive"], preprocessing=pre.to_dict())
    import torch

    torch.manual_seed(0)
    text = Predictor.from_dir(save_model_dir(spec.build().eval(), spec, tmp_path / "lstm"))
    reviews = load_split(rt_polarity_dir, "test").texts
    news = load_split(bbc_news_dir, "test").texts
    ref = pd.DataFrame(profile.reference(text, reviews[:400], task="t", version="1"))
    assert ref["length"].between(1, text.preprocessor.max_length).all() and ref["unknown_share"].between(0, 1).all()
    calm = drift.compare(ref, pd.DataFrame(profile.reference(text, reviews[400:700], task="t", version="1")))
    other = drift.compare(ref, pd.DataFrame(profile.reference(text, news[:300], task="t", version="1")))
    by_name = {t.name: t for t in other.tests}
    assert {"length", "unknown_share"} <= set(by_name) and {t.name for t in calm.tests} >= {"length", "unknown_share"}
    assert not any(t.drifted for t in calm.tests if t.name in ("length", "unknown_share")), calm.tests
    assert by_name["length"].drifted, by_name["length"]
