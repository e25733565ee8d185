import io
import zlib

import numpy as np
import pytest
from PIL import Image

from modelyard.data.preprocess import ImagePreprocessor
from modelyard.inference import InvalidInputError, Predictor, decode_image
from modelyard.models.artifact import ModelSpec, save_model_dir

GRAY_28 = ImagePreprocessor((28, 28, 1), (28, 28, 1), (0.286,), (0.353,))


@pytest.fixture
def spec(class_names):
    return ModelSpec(family="cnn", args={"width": 8, "dropout": 0.0}, labels=class_names,
                     preprocessing=GRAY_28.to_dict())


def png(array: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_real_png_decodes_to_the_exact_test_pixels(image_bytes, test_sample, spec):
    shirt = decode_image(image_bytes["shirt"], spec)
    assert shirt.shape == (28, 28) and shirt.dtype == np.uint8
    # The fixture is the first Shirt (label 6) of the test split; the committed sample holds it too.
    first_shirt = test_sample.images[np.flatnonzero(test_sample.labels == 6)[0]]
    assert np.array_equal(shirt, first_shirt)


def test_colour_and_larger_images_are_converted_and_resized(image_bytes, spec):
    gray = np.asarray(Image.open(io.BytesIO(image_bytes["trouser"])))
    rgb = np.stack([gray] * 3, axis=-1).repeat(4, axis=0).repeat(4, axis=1)  # (112, 112, 3)
    out = decode_image(png(rgb, "RGB"), spec)
    assert out.shape == (28, 28)
    assert np.abs(out.astype(int) - gray.astype(int)).mean() < 8  # same picture after the round trip


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "empty_file"),
        (b"this is a text file, not a picture", "not_an_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not_an_image"),  # a PNG signature with garbage behind it
        (png(np.zeros((1, 1), dtype=np.uint8)), "image_too_small"),
        (png(np.zeros((5, 200), dtype=np.uint8)), "image_too_small"),
    ],
)
def test_unusable_uploads_get_a_named_reason(payload, code, spec):
    with pytest.raises(InvalidInputError) as exc:
        decode_image(payload, spec)
    assert exc.value.code == code and exc.value.message


def png_declaring(width: int, height: int) -> bytes:
    """A small, well-formed PNG whose header declares width x height (a decompression bomb's shape).

    The IHDR chunk's CRC is recomputed, so the file passes Pillow's checks and only its size is at fault.
    """
    data = bytearray(png(np.zeros((10, 10), dtype=np.uint8)))
    assert data[12:16] == b"IHDR"
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # CRC over chunk type + data
    return bytes(data)


@pytest.mark.parametrize(
    ("width", "height"),
    [(5000, 5000), (20000, 20000)],
    ids=["past-our-limit", "past-pillows-limit"],  # 25 MP: our header check; 400 MP: Pillow's own refusal
)
def test_huge_declared_dimensions_are_refused_before_decoding(spec, width, height):
    bomb = png_declaring(width, height)
    with pytest.raises(InvalidInputError) as exc:
        decode_image(bomb, spec)
    assert exc.value.code == "image_too_large", exc.value.message
    assert str(width * height) in exc.value.message or f"{width}x{height}" in exc.value.message


def test_predictor_scores_are_probabilities_over_the_labels(tmp_path, spec, test_sample):
    save_model_dir(spec.build(), spec, tmp_path)
    predictor = Predictor.from_dir(tmp_path)
    preds = predictor.predict(test_sample.images[:5])
    assert len(preds) == 5
    for p in preds:
        assert set(p.scores) == set(spec.labels)
        assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-4)
        assert p.label == spec.labels[p.index] == max(p.scores, key=p.scores.get)


@pytest.mark.parametrize(
    ("images", "code"),
    [(np.zeros((2, 27, 28), dtype=np.uint8), "bad_shape"), (np.zeros((2, 28, 28), dtype=np.float32), "bad_dtype")],
)
def test_predictor_refuses_batches_unlike_its_training_data(tmp_path, spec, images, code):
    save_model_dir(spec.build(), spec, tmp_path)
    with pytest.raises(InvalidInputError) as exc:
        Predictor.from_dir(tmp_path).predict(images)
    assert exc.value.code == code
