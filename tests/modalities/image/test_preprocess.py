"""modelyard.modalities.image.preprocess: the fitted preprocessor, the one definition of how pixels reach a
model (evaluation, the pyfunc, ONNX and serving share it), and `decode`, which turns a user's image file into
what the model was trained on or refuses it with a stable code."""

from __future__ import annotations

import io
import json
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from modelyard.artifact import read_spec
from modelyard.data.datasets import get_dataset
from modelyard.modalities import InvalidInputError, get_modality
from modelyard.modalities.image import ImagePolicy, ImagePreprocessor, ImageSchema
from modelyard.modalities.image.preprocess import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, ImageBatches, ImageGraph

GRAY_28 = ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.286,), (0.353,))
GRAY_TO_RGB64 = ImagePreprocessor((28, 28, 1), (64, 64, 3), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "backbone")
FASHION = ImagePolicy.from_dict(get_dataset("fashion_mnist").augment)


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def png(array: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A small, well-formed PNG whose header declares width x height (a decompression bomb's shape).

    The IHDR chunk's CRC is recomputed, so the file passes Pillow's checks and only its size is at fault.
    """
    data = bytearray(png(np.zeros((10, 10), dtype=np.uint8)))
    assert data[12:16] == b"IHDR"
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # CRC over chunk type + data
    return bytes(data)


# ---- tensors -----------------------------------------------------------------------------------------


def test_normalize_uses_the_given_statistics(test_sample):
    x = ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.5,), (0.25,))(torch.from_numpy(test_sample.images))
    expected = (test_sample.images.astype(np.float32) / 255 - 0.5) / 0.25
    assert x.shape == (200, 1, 28, 28)
    np.testing.assert_allclose(x.squeeze(1).numpy(), expected, rtol=1e-6)


def test_gray_data_reach_a_colour_backbone_resized_and_in_its_range(test_sample):
    x = GRAY_TO_RGB64(torch.from_numpy(test_sample.images[:8]))
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # gray in every channel
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6  # (pixel - 0.5) / 0.5
    # Upsampling keeps the picture: pooled back to 28 px it matches the original.
    back = torch.nn.functional.interpolate(x[:, :1] * 0.5 + 0.5, size=28, mode="bilinear", antialias=True)
    back = back.squeeze(1)
    original = torch.from_numpy(test_sample.images[:8]).float() / 255
    own, other = (back - original).abs().mean(), (back - original.roll(1, 0)).abs().mean()
    assert own < 0.06 and other > 3 * own


def test_colour_images_get_per_channel_statistics():
    pre = ImagePreprocessor((32, 32, 3), (32, 32, 3), (0.1, 0.5, 0.9), (0.2, 0.25, 0.5))
    x = pre(torch.full((2, 32, 32, 3), 255, dtype=torch.uint8))  # (N, H, W, C) storage -> (N, C, H, W)
    assert x.shape == (2, 3, 32, 32)
    assert x[0, :, 0, 0].tolist() == pytest.approx([(1 - 0.1) / 0.2, (1 - 0.5) / 0.25, (1 - 0.9) / 0.5])


def test_training_augmentation_keeps_the_models_input_shape(test_sample):
    images = torch.from_numpy(test_sample.images[:16])
    x = GRAY_TO_RGB64.train_batch(images, FASHION, torch.Generator().manual_seed(0))
    assert x.shape == (16, 3, 64, 64)
    assert not torch.equal(x, GRAY_TO_RGB64(images))  # it did augment


def test_the_batch_adapter_augments_for_training_only(test_sample):
    rows = {"images": torch.from_numpy(test_sample.images[:32]),
            "labels": torch.from_numpy(test_sample.labels[:32])}
    adapter = ImageBatches(GRAY_28, FASHION)
    x, y = adapter.train_batch(rows, torch.Generator().manual_seed(0))
    assert x.shape == (32, 1, 28, 28) and torch.equal(y, rows["labels"])
    ex, ey = adapter.eval_batch(rows)
    assert torch.equal(ex, GRAY_28(rows["images"])) and torch.equal(ey, rows["labels"])
    assert not torch.equal(x, ex)


def test_the_graph_is_the_model_with_the_preprocessing_in_front(test_sample):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    graph = GRAY_28.graph(model)
    assert isinstance(graph, ImageGraph)
    images = torch.from_numpy(test_sample.images[:4])
    assert torch.equal(graph(images), model(GRAY_28(images)))
    assert GRAY_28.dynamic_axes == {"images": {0: "batch"}}
    assert GRAY_TO_RGB64.model_input() == {"in_channels": 3, "height": 64, "width": 64}


def test_feeds_cover_every_row_in_order(test_sample):
    fed = list(GRAY_28.feeds(test_sample.images[:10], batch_size=4))
    assert [rows.tolist() for rows, _ in fed] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert np.array_equal(np.concatenate([f["images"].numpy() for _, f in fed]), test_sample.images[:10])


# ---- checking batches and building preprocessors -------------------------------------------------------


def test_batches_of_the_wrong_shape_or_type_are_named(test_sample):
    with pytest.raises(InvalidInputError, match=r"expected images shaped \(N, 28, 28\)") as exc:
        GRAY_TO_RGB64.check_batch(np.zeros((2, 32, 32, 3), dtype=np.uint8))
    assert exc.value.code == "bad_shape"
    with pytest.raises(InvalidInputError, match="uint8") as exc:
        GRAY_TO_RGB64.check_batch(test_sample.images[:2].astype(np.float32))
    assert exc.value.code == "bad_dtype"
    # One image is a batch of one.
    assert GRAY_TO_RGB64.check_batch(test_sample.images[0]).shape == (1, 28, 28)


def test_impossible_channel_plans_and_bad_statistics_are_refused():
    with pytest.raises(ValueError, match="cannot feed 3-channel data to a 1-channel model"):
        ImagePreprocessor((32, 32, 3), (32, 32, 1), (0.5,), (0.5,))
    with pytest.raises(ValueError, match="mean/std need 3 values"):
        ImagePreprocessor((28, 28, 1), (28, 28, 3), (0.5,), (0.5,))
    with pytest.raises(ValueError, match="std must be positive"):
        ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.5,), (0.0,))


def test_the_modality_fits_the_preprocessor_a_family_asks_for():
    image = get_modality("image")
    stats = {"mean": [0.29], "std": [0.35]}
    schema = ImageSchema(28, 28, 1)
    plain = image.fit_preprocessor({}, stats, schema)  # the data's size and channels, the fitted statistics
    assert plain == ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.29,), (0.35,),
                                      "fitted on the training split")
    wide = image.fit_preprocessor({"image_size": 64, "channels": 3}, stats, schema)  # gray data, colour model
    assert wide.input_shape == (64, 64, 3) and wide.mean == (0.29,) * 3 and wide.std == (0.35,) * 3
    fixed = image.fit_preprocessor({"normalization": ((0.4, 0.5, 0.6), (0.2, 0.2, 0.2), "ImageNet's"),
                                    "channels": 3}, stats, schema)
    assert fixed.mean == (0.4, 0.5, 0.6) and fixed.normalization == "ImageNet's"


def test_round_trip_through_model_json_and_the_format_before_it(tmp_path, class_names):
    assert ImagePreprocessor.from_dict(json.loads(json.dumps(GRAY_TO_RGB64.to_dict()))) == GRAY_TO_RGB64
    with pytest.raises(ValueError, match="not an image preprocessor: kind 'text'"):
        ImagePreprocessor.from_dict({**GRAY_28.to_dict(), "kind": "text"})
    # A model registered before the task layer (format 1) still loads, as a gray 28x28 preprocessor.
    (tmp_path / "model.json").write_text(json.dumps({
        "family": "cnn", "args": {"in_channels": 1, "num_classes": 10, "width": 32, "dropout": 0.1,
                                  "image_size": [28, 28]},
        "labels": class_names,
        "input": {"kind": "image", "channels": 1, "height": 28, "width": 28, "dtype": "uint8"},
        "normalization": {"mean": 0.286, "std": 0.353}, "extra": {}, "format_version": 1,
    }))
    spec = read_spec(tmp_path)
    assert spec.preprocessor() == GRAY_28
    assert "image_size" not in spec.args and spec.build()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


# ---- decoding what a user sends ----------------------------------------------------------------------


def test_real_png_decodes_to_the_exact_test_pixels(image_bytes, test_sample):
    shirt = GRAY_28.decode(image_bytes["shirt"])
    assert shirt.shape == (28, 28) and shirt.dtype == np.uint8
    # The fixture is the first Shirt (label 6) of the test split; the committed sample holds it too.
    first_shirt = test_sample.images[np.flatnonzero(test_sample.labels == 6)[0]]
    assert np.array_equal(shirt, first_shirt)
    shirt[0, 0] = 1  # a writable array of its own


def test_colour_and_larger_images_are_converted_and_resized(image_bytes):
    gray = np.asarray(Image.open(io.BytesIO(image_bytes["trouser"])))
    rgb = np.stack([gray] * 3, axis=-1).repeat(4, axis=0).repeat(4, axis=1)  # (112, 112, 3)
    out = GRAY_28.decode(png(rgb, "RGB"))
    assert out.shape == (28, 28)
    assert np.abs(out.astype(int) - gray.astype(int)).mean() < 8  # same picture after the round trip


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
    assert colour.shape == (32, 32, 3)
    assert colour[..., 0].mean() > colour[..., 2].mean()  # red kept above blue


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "empty_file"),
        (b"this is a text file, not a picture", "not_an_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not_an_image"),  # a PNG signature with garbage behind it
        (png(np.zeros((1, 1), dtype=np.uint8)), "image_too_small"),
        (png(np.zeros((5, 200), dtype=np.uint8)), "image_too_small"),
        (png(np.zeros((MIN_IMAGE_SIDE - 1, MIN_IMAGE_SIDE), dtype=np.uint8)), "image_too_small"),
    ],
)
def test_unusable_uploads_get_a_named_reason(payload, code):
    with pytest.raises(InvalidInputError) as exc:
        GRAY_28.decode(payload)
    assert exc.value.code == code and exc.value.message


def test_a_truncated_real_image_is_not_an_image(image_bytes):
    data = image_bytes["bag"]
    with pytest.raises(InvalidInputError) as exc:
        GRAY_28.decode(data[: len(data) // 2])
    assert exc.value.code == "not_an_image"


def test_the_smallest_allowed_side_decodes():
    smallest = png(np.full((MIN_IMAGE_SIDE, MIN_IMAGE_SIDE), 200, dtype=np.uint8))
    assert GRAY_28.decode(smallest).shape == (28, 28)


@pytest.mark.parametrize(
    ("width", "height"),
    [(5000, 5000), (20000, 20000)],
    ids=["past-our-limit", "past-pillows-limit"],  # 25 MP: our header check; 400 MP: Pillow's own refusal
)
def test_huge_declared_dimensions_are_refused_before_decoding(width, height):
    assert width * height > MAX_IMAGE_PIXELS
    bomb = png_declaring(width, height)
    with pytest.raises(InvalidInputError) as exc:
        GRAY_28.decode(bomb)
    assert exc.value.code == "image_too_large", exc.value.message
    assert str(width * height) in exc.value.message or f"{width}x{height}" in exc.value.message
