"""The contract every model family meets, on every modality it declares: parametrized over the registry, so a
new family file is tested here with no edit to this file.

For each (family, modality), with real data of that modality: the modality's preprocessor is fitted as the
family asks (its `preprocessing()` request, statistics of real rows); the model is built from the family's
builder arguments (pretrained weights off where the family allows it, so nothing is downloaded); a batch goes
through the preprocessor's graph to (N, classes) logits; the model saved with `save_model_dir` loads back
giving the same logits; its ONNX export reaches parity with torch on real inputs; and a real request body,
decoded by the modality's serving codec, is predicted by a Predictor.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pytest
import torch

from modelyard.artifact import ModelSpec, load_model_dir, read_spec, save_model_dir
from modelyard.data.datasets import get_dataset
from modelyard.inference import Predictor
from modelyard.inference.onnx_export import MAX_ABS_LOGIT_DIFF, export_and_check
from modelyard.modalities import Limits, get_modality, modality_names
from modelyard.models import build_model, config_class, family_config, family_names
from modelyard.plugins import UnknownNameError

# The smallest settings of each family that still build its real architecture (pretrained weights off where
# the family has a switch for it); a family not listed is tested with its defaults.
TINY: dict[str, dict[str, Any]] = {
    "cnn": {"width": 8},
    "mlp": {"hidden": 32},
    "transfer": {"image_size": 32, "weights": "none"},
    "lstm": {"embedding_dim": 16, "hidden": 16},
}
# Families whose build, forward and ONNX export take more than a few seconds on 2 cores (bert: 22.7M
# parameters).
HEAVY = {"bert"}
LIMITS = Limits(max_body_bytes=4 * 1024 * 1024, max_items=64)


def cases() -> list[Any]:
    return [pytest.param(family, modality, id=f"{family}-{modality}",
                         marks=[pytest.mark.slow] if family in HEAVY else [])
            for family in family_names() for modality in config_class(family).modalities]


@dataclass
class RealData:
    """Real rows of one modality, the dataset they come from, and a real request body for serving."""

    inputs: Any  # what a Predictor takes: uint8 images, a list of texts
    statistics: dict[str, Any]  # the modality's statistics, fitted on real rows
    schema: Any
    classes: list[str]
    body: bytes
    content_type: str
    decoded: Any  # what decoding `body` must give, collated


def image_data(test_sample, image_bytes) -> RealData:
    """The committed Fashion-MNIST test images; a committed PNG of a real test image in a multipart form."""
    from urllib3 import encode_multipart_formdata

    spec = get_dataset("fashion_mnist")
    body, content_type = encode_multipart_formdata({"file": ("shirt.png", image_bytes["shirt"], "image/png")})
    first_shirt = int(np.flatnonzero(test_sample.labels == spec.classes.index("Shirt"))[0])
    return RealData(inputs=test_sample.images[:8], statistics=get_modality("image").fit_statistics(test_sample),
                    schema=spec.schema, classes=list(spec.classes), body=body, content_type=content_type,
                    decoded=test_sample.images[first_shirt][None])


def text_data(rt_polarity_dir) -> RealData:
    """Rotten Tomatoes test sentences of different lengths; two of them as a JSON request."""
    from modelyard.data.dataset import load_split

    spec = get_dataset("rt_polarity")
    test = load_split(rt_polarity_dir, "test")
    texts = sorted(test.texts[:40], key=len)
    picked = [texts[0], texts[len(texts) // 2], texts[-1]]  # short, middling, long: padding and masks matter
    body = json.dumps({"texts": picked[:2]}).encode()
    return RealData(inputs=picked, statistics=get_modality("text").fit_statistics(test), schema=spec.schema,
                    classes=list(spec.classes), body=body, content_type="application/json", decoded=picked[:2])


def series_data(dataset_dir) -> RealData:
    """JapaneseVowels test utterances (12 cepstrum coefficients a frame) of different lengths; two as JSON."""
    from modelyard.data.dataset import load_split, read_metadata

    test = load_split(dataset_dir, "test")
    series = sorted(test.series[:40], key=len)
    picked = [series[0], series[len(series) // 2], series[-1]]
    body = json.dumps({"batch": [np.asarray(s).tolist() for s in picked[:2]]}).encode()
    return RealData(inputs=picked, statistics=get_modality("series").fit_statistics(test),
                    schema=get_dataset("japanese_vowels").schema, classes=list(read_metadata(dataset_dir)["classes"]),
                    body=body, content_type="application/json", decoded=picked[:2])


def fetched_dataset(request, name: str):
    """The session fixture `<name>_dir` where conftest has one, else the dataset fetched into the tests' data."""
    try:
        return request.getfixturevalue(f"{name}_dir")
    except pytest.FixtureLookupError:
        from helpers.data import fetched

        return fetched(name)


REAL_DATA = {
    "image": lambda request: image_data(request.getfixturevalue("test_sample"), request.getfixturevalue("image_bytes")),
    "text": lambda request: text_data(request.getfixturevalue("rt_polarity_dir")),
    "series": lambda request: series_data(fetched_dataset(request, "japanese_vowels")),
}


@pytest.fixture
def real(request):
    def of(modality: str) -> RealData:
        if modality not in REAL_DATA:
            pytest.fail(f"no real data of modality {modality!r} for the family contract: add it to REAL_DATA")
        return REAL_DATA[modality](request)
    return of


@pytest.mark.parametrize(("name", "modality"), cases())
def test_every_family_meets_the_contract_on_every_modality_it_takes(name, modality, real, tmp_path):
    data = real(modality)
    family = family_config({"name": name, **TINY.get(name, {})})
    kind = get_modality(modality)
    pre = kind.fit_preprocessor(family.preprocessing(), data.statistics, data.schema)
    spec = ModelSpec(family=name, args=family.builder_args(pre.model_input(), len(data.classes)),
                     labels=data.classes, preprocessing=pre.to_dict())
    torch.manual_seed(0)
    model = spec.build()
    family.prepare(model)  # pretrained weights where the family loads them offline; frozen parts
    model.eval()

    # The parameter groups the optimiser gets hold trainable parameters of this model, each once.
    grouped = [p for _, params, _ in family.param_groups(model) for p in params]
    assert grouped and all(p.requires_grad for p in grouped)
    assert len({id(p) for p in grouped}) == len(grouped) <= len(list(model.parameters()))

    # A batch of real inputs through the preprocessor's graph: (N, classes) logits.
    checked = pre.check_batch(data.inputs)
    rows, feeds = next(iter(pre.feeds(checked, batch_size=len(checked))))
    with torch.no_grad():
        logits = pre.graph(model)(**feeds)
    assert logits.shape == (len(data.inputs), len(data.classes)) and torch.isfinite(logits).all()

    # Saved and loaded back without training code: the same spec (as JSON has it: bert's id2label keys come
    # back as strings), the same logits, in eval mode.
    model_dir = save_model_dir(model, spec, tmp_path / name)
    loaded, loaded_spec = load_model_dir(model_dir)
    assert asdict(loaded_spec) == json.loads(json.dumps(asdict(spec))) and read_spec(model_dir) == loaded_spec
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded_spec.preprocessor().graph(loaded)(**feeds), logits)

    # ONNX export on real inputs, at parity with torch.
    report = export_and_check(model_dir, data.inputs)
    assert report["status"] == "ok", report
    assert report["rows"] == len(data.inputs) and report["max_abs_logit_diff"] <= MAX_ABS_LOGIT_DIFF

    # Serving: a real request body decoded by the modality's codec, collated and predicted.
    codec = kind.codec(loaded_spec.preprocessor(), LIMITS)
    codec.check_content_type(data.content_type)
    items, _ = codec.decode(data.body, data.content_type)
    batch = codec.collate(items)
    assert len(batch) == len(data.decoded)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(batch, data.decoded))
    predictor = Predictor(loaded, loaded_spec)
    predictions = predictor.predict(batch)
    assert len(predictions) == len(items) and all(p.label in data.classes for p in predictions)
    probs = predictor.predict_proba(batch)
    assert [p.index for p in predictions] == probs.argmax(1).tolist()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", family_names())
def test_each_family_names_itself_after_its_module_and_takes_modalities_that_exist(name):
    cls = config_class(name)
    assert cls.model_fields["name"].default == name
    assert cls.modalities and set(cls.modalities) <= set(modality_names())


def test_registry_lists_families_and_names_unknown_ones():
    assert {"cnn", "mlp", "resnet18", "transfer", "bert", "lstm"} <= set(family_names())
    with pytest.raises(UnknownNameError, match="unknown model family 'resnet9000'.*cnn"):
        build_model("resnet9000")
    with pytest.raises(UnknownNameError, match="resnet9000"):
        family_config({"name": "resnet9000"})
