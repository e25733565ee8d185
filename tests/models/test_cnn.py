"""What the CNN family promises beyond the contract every family meets (tests/models/test_contract.py)."""

from modelyard.models import build_model, family_config


def parameters(**config) -> int:
    family = family_config({"name": "cnn", **config})
    model = build_model("cnn", **family.builder_args({"in_channels": 1, "height": 28, "width": 28}, 10))
    return sum(p.numel() for p in model.parameters())


def test_cnn_width_scales_parameters():
    assert parameters(width=32) > 10 * parameters(width=8)
