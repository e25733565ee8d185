import pytest
import torch

from modelyard.models import available_models, build_model
from modelyard.models.artifact import ModelSpec, load_model_dir, read_spec, save_model_dir


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_registered_families_map_images_to_logits(name):
    model = build_model(name, in_channels=1, num_classes=10, width=16, dropout=0.0).eval()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_registry_lists_families_and_names_unknown_ones():
    assert {"cnn", "mlp"} <= set(available_models())
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*cnn"):
        build_model("resnet9000")


def test_cnn_width_scales_parameters():
    small = sum(p.numel() for p in build_model("cnn", width=8).parameters())
    large = sum(p.numel() for p in build_model("cnn", width=32).parameters())
    assert large > 10 * small


def test_saved_model_rebuilds_without_training_code(tmp_path, class_names):
    spec = ModelSpec(family="cnn", args={"in_channels": 1, "num_classes": 10, "width": 8, "dropout": 0.0},
                     labels=class_names, input={"kind": "image", "channels": 1, "height": 28, "width": 28, "dtype": "uint8"},
                     normalization={"mean": 0.286, "std": 0.353})
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
