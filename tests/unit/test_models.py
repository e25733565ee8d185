import pytest
import torch

from modelyard.config import PipelineConfig
from modelyard.data.preprocess import ImagePreprocessor
from modelyard.models import available_models, build_model
from modelyard.models.artifact import ModelSpec, load_model_dir, read_spec, save_model_dir

GRAY_28 = ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.286,), (0.353,))


@pytest.mark.parametrize(("family", "shape"), [
    ({"name": "cnn", "width": 16}, (28, 28, 1)),
    ({"name": "mlp", "hidden": 32}, (28, 28, 1)),
    ({"name": "resnet18"}, (32, 32, 3)),
    ({"name": "transfer", "weights": "none", "image_size": 64}, (64, 64, 3)),
    ({"name": "transfer", "backbone": "resnet50", "weights": "none", "image_size": 64}, (64, 64, 3)),
])
def test_every_family_maps_its_input_to_logits(family, shape):
    cfg = PipelineConfig(model=family).model
    assert cfg.input_shape(shape) == shape
    model = build_model(cfg.name, **cfg.builder_args(shape, 7)).eval()
    h, w, c = shape
    with torch.no_grad():
        assert model(torch.zeros(2, c, h, w)).shape == (2, 7)


def test_registry_lists_families_and_names_unknown_ones():
    assert {"cnn", "mlp", "resnet18", "transfer"} <= set(available_models())
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*cnn"):
        build_model("resnet9000")


def test_cnn_width_scales_parameters():
    small = sum(p.numel() for p in build_model("cnn", width=8).parameters())
    large = sum(p.numel() for p in build_model("cnn", width=32).parameters())
    assert large > 10 * small


def test_saved_model_rebuilds_without_training_code(tmp_path, class_names):
    spec = ModelSpec(family="cnn", args={"in_channels": 1, "num_classes": 10, "width": 8, "dropout": 0.0},
                     labels=class_names, preprocessing=GRAY_28.to_dict())
    torch.manual_seed(0)
    model = spec.build().eval()
    save_model_dir(model, spec, tmp_path / "m")
    loaded, loaded_spec = load_model_dir(tmp_path / "m")
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    assert loaded_spec == spec and not loaded.training


def test_reading_a_non_model_dir_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        read_spec(tmp_path)
