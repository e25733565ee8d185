"""The fitted preprocessor: the one definition of how pixels reach a model, shared by evaluation, the pyfunc
and serving."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from modelyard.data.augment import AugmentPolicy
from modelyard.data.preprocess import ImagePreprocessor, InvalidInputError
from modelyard.models.artifact import read_spec

GRAY_TO_RGB64 = ImagePreprocessor((28, 28, 1), (64, 64, 3), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "backbone")


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_gray_data_reach_a_colour_backbone_resized_and_in_its_range(test_sample):
    x = GRAY_TO_RGB64(torch.from_numpy(test_sample.images[:8]))
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # gray in every channel
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6  # (pixel - 0.5) / 0.5
    # Upsampling keeps the picture: pooled back to 28 px it matches the original.
    back = torch.nn.functional.interpolate(x[:, :1] * 0.5 + 0.5, size=28, mode="bilinear", antialias=True).squeeze(1)
    original = torch.from_numpy(test_sample.images[:8]).float() / 255
    own, other = (back - original).abs().mean(), (back - original.roll(1, 0)).abs().mean()
    assert own < 0.06 and other > 3 * own


def test_colour_images_get_per_channel_statistics():
    pre = ImagePreprocessor((32, 32, 3), (32, 32, 3), (0.1, 0.5, 0.9), (0.2, 0.25, 0.5))
    x = pre(torch.full((2, 32, 32, 3), 255, dtype=torch.uint8))  # (N, H, W, C) storage -> (N, C, H, W)
    assert x.shape == (2, 3, 32, 32)
    assert x[0, :, 0, 0].tolist() == pytest.approx([(1 - 0.1) / 0.2, (1 - 0.5) / 0.25, (1 - 0.9) / 0.5])


def test_training_augmentation_keeps_the_models_input_shape(test_sample):
    x = GRAY_TO_RGB64.train_batch(torch.from_numpy(test_sample.images[:16]), AugmentPolicy(),
                                  torch.Generator().manual_seed(0))
    assert x.shape == (16, 3, 64, 64)


def test_a_colour_jpeg_of_another_size_becomes_a_training_shaped_image(image_bytes):
    # A real Fashion-MNIST picture, enlarged to 200x150 and tinted: what a user's phone might send.
    gray = np.asarray(Image.open(io.BytesIO(image_bytes["sneaker"])))
    big = np.asarray(Image.fromarray(gray).resize((200, 150), Image.Resampling.BICUBIC))
    tinted = np.stack([big, (big * 0.8).astype(np.uint8), (big * 0.6).astype(np.uint8)], axis=-1)
    out = GRAY_TO_RGB64.decode(jpeg(tinted))
    assert out.shape == (28, 28) and out.dtype == np.uint8  # what the model was trained on
    luminance_of_tint = 0.299 + 0.587 * 0.8 + 0.114 * 0.6
    assert np.abs(out.astype(float) - gray * luminance_of_tint).mean() < 12
    colour = ImagePreprocessor((32, 32, 3), (32, 32, 3), (0.5,) * 3, (0.25,) * 3).decode(jpeg(tinted))
    assert colour.shape == (32, 32, 3) and colour[..., 0].mean() > colour[..., 2].mean()  # red kept above blue


def test_batches_of_the_wrong_shape_or_type_are_named(test_sample):
    with pytest.raises(InvalidInputError, match=r"expected images shaped \(N, 28, 28\)"):
        GRAY_TO_RGB64.check_batch(np.zeros((2, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(InvalidInputError, match="uint8"):
        GRAY_TO_RGB64.check_batch(test_sample.images[:2].astype(np.float32))
    assert GRAY_TO_RGB64.check_batch(test_sample.images[0]).shape == (1, 28, 28)  # one image is a batch of one


def test_impossible_channel_plans_and_bad_statistics_are_refused():
    with pytest.raises(ValueError, match="cannot feed 3-channel data to a 1-channel model"):
        ImagePreprocessor((32, 32, 3), (32, 32, 1), (0.5,), (0.5,))
    with pytest.raises(ValueError, match="mean/std need 3 values"):
        ImagePreprocessor((28, 28, 1), (28, 28, 3), (0.5,), (0.5,))
    with pytest.raises(ValueError, match="std must be positive"):
        ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.5,), (0.0,))


def test_round_trip_through_model_json_and_the_format_before_it(tmp_path, class_names):
    assert ImagePreprocessor.from_dict(json.loads(json.dumps(GRAY_TO_RGB64.to_dict()))) == GRAY_TO_RGB64
    # A model registered before the task layer (format 1) still loads, as a gray 28x28 preprocessor.
    (tmp_path / "model.json").write_text(json.dumps({
        "family": "cnn", "args": {"in_channels": 1, "num_classes": 10, "width": 32, "dropout": 0.1,
                                  "image_size": [28, 28]},
        "labels": class_names, "input": {"kind": "image", "channels": 1, "height": 28, "width": 28, "dtype": "uint8"},
        "normalization": {"mean": 0.286, "std": 0.353}, "extra": {}, "format_version": 1,
    }))
    spec = read_spec(tmp_path)
    assert spec.preprocessor() == ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.286,), (0.353,))
    assert "image_size" not in spec.args and spec.build()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
