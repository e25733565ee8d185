import io

import numpy as np
import pytest
from PIL import Image

from modelyard.inference import InvalidInputError, Predictor, decode_image
from modelyard.models.artifact import ModelSpec, save_model_dir


@pytest.fixture
def spec(class_names):
    return ModelSpec(family="cnn", args={"width": 8, "dropout": 0.0}, labels=class_names,
                     input={"kind": "image", "channels": 1, "height": 28, "width": 28, "dtype": "uint8"},
                     normalization={"mean": 0.286, "std": 0.353})


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


def test_huge_declared_dimensions_are_refused_before_decoding(spec):
    # A tiny file that claims 20000x20000 pixels (a decompression bomb): refused from the header alone.
    data = png(np.zeros((10, 10), dtype=np.uint8))
    bomb = bytearray(data)
    bomb[16:24] = (20000).to_bytes(4, "big") + (20000).to_bytes(4, "big")  # IHDR width/height
    with pytest.raises(InvalidInputError) as exc:
        decode_image(bytes(bomb), spec)
    assert exc.value.code in {"image_too_large", "not_an_image"}


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
