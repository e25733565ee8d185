"""Transfer learning's weights: the ImageNet weights are really the ImageNet weights, a named weights file is
what gets loaded (the ResNet-50 path used offline), bad or missing weights are named errors, and the family
asks for the backbone's own input size and normalisation."""

from __future__ import annotations

import pytest
import torch

from modelyard.data.datasets import get_dataset
from modelyard.modalities import get_modality
from modelyard.modalities.image import ImagePreprocessor
from modelyard.models import build_model, family_config
from modelyard.models.transfer import WeightsError, create_backbone, pretrained_classifier

# ImageNet-1k class indices
ESPRESSO = 967
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ROCKET_LIKE = {657, 744, 812}  # missile, projectile, space shuttle
COLOUR_64 = {"in_channels": 3, "height": 64, "width": 64}


@pytest.mark.slow
def test_efficientnet_lite0_names_real_photos_with_imagenet_classes():
    """scikit-image's photos through the backbone's own preprocessing, at 224 px: if the weights were random
    or mapped wrongly, the right classes would not come out on top."""
    from skimage import data

    model = pretrained_classifier("efficientnet_lite0")
    top5 = {}
    for name in ("coffee", "chelsea", "rocket"):
        photo = getattr(data, name)()
        pre = ImagePreprocessor(photo.shape, (224, 224, 3), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        with torch.no_grad():
            top5[name] = model(pre(torch.from_numpy(photo)[None])).topk(5).indices[0].tolist()
    assert top5["coffee"][0] == ESPRESSO
    assert CATS & set(top5["chelsea"][:3])
    assert len(ROCKET_LIKE & set(top5["rocket"])) >= 2
    # The same architecture with random weights does not (the check can fail).
    random = create_backbone("efficientnet_lite0", num_classes=1000).eval()
    photo = data.coffee()
    pre = ImagePreprocessor(photo.shape, (224, 224, 3), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with torch.no_grad():
        assert random(pre(torch.from_numpy(photo)[None])).argmax().item() != ESPRESSO


def resnet50_weights_file(tmp_path, seed: int = 7):
    """A weights file the test writes: a torchvision resnet50 state_dict (seeded, so it is known)."""
    torch.manual_seed(seed)
    state = create_backbone("resnet50", num_classes=1000).state_dict()
    path = tmp_path / "resnet50-weights.pth"
    torch.save(state, path)
    return path, state


def test_a_named_resnet50_weights_file_is_loaded_into_the_backbone(tmp_path):
    path, state = resnet50_weights_file(tmp_path)
    family = family_config({"name": "transfer", "backbone": "resnet50", "weights": str(path)})
    model = build_model("transfer", **family.builder_args(COLOUR_64, 10))
    family.prepare(model)
    loaded = model.backbone.state_dict()
    assert loaded.keys() == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_the_family_asks_for_colour_at_its_size_normalised_as_its_backbone_was_trained(test_sample):
    """Gray Fashion-MNIST fed to a ResNet-50: resized, repeated to three channels, ImageNet's statistics (not
    the data's)."""
    family = family_config({"name": "transfer", "backbone": "resnet50", "weights": "none", "image_size": 48})
    image = get_modality("image")
    pre = image.fit_preprocessor(family.preprocessing(), image.fit_statistics(test_sample),
                                 get_dataset("fashion_mnist").schema)
    assert pre.source_shape == (28, 28, 1) and pre.input_shape == (48, 48, 3)
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225) and "resnet50" in pre.normalization
    x = pre(torch.from_numpy(test_sample.images[:4]))
    assert x.shape == (4, 3, 48, 48)
    assert not torch.equal(x[:, 0], x[:, 1])  # one gray value, normalised per channel


def test_a_weights_file_of_another_network_is_refused_by_name(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    family = family_config({"name": "transfer", "backbone": "resnet50", "weights": str(path)})
    model = build_model("transfer", **family.builder_args(COLOUR_64, 10))
    with pytest.raises((WeightsError, RuntimeError), match="resnet50 weights do not fit|size mismatch"):
        family.prepare(model)


def test_a_missing_weights_file_is_a_config_error():
    with pytest.raises(ValueError, match="model.weights must be auto, none or an existing weights file"):
        family_config({"name": "transfer", "backbone": "resnet50", "weights": "/nonexistent/r50.pth"})


def test_offline_resnet50_auto_weights_say_to_name_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached download to fall back on
    family = family_config({"name": "transfer", "backbone": "resnet50"})
    model = build_model("transfer", **family.builder_args(COLOUR_64, 10))
    try:
        family.prepare(model)
    except WeightsError as exc:
        assert "set model.weights to a file" in str(exc)
    else:  # a machine with the network downloaded the real weights
        pytest.skip("torchvision's ResNet-50 weights were downloadable here")


def test_foreign_fields_are_errors_not_swallowed():
    with pytest.raises(ValueError, match="width"):
        family_config({"name": "transfer", "width": 32})
    with pytest.raises(ValueError, match="backbone"):
        family_config({"name": "transfer", "backbone": "vgg16"})
