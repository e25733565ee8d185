"""The transfer recipe end to end, the way `modelyard pipeline --recipe fashion-transfer` runs it: fetch,
validate, augment, Ray Train (EfficientNet-Lite0 with its ImageNet weights, frozen, features cached), evaluate,
register under the task's own name, promote, serve with Ray Serve. The served model answers colour JPEGs of
other sizes through the saved preprocessing, and reload, pyfunc and HTTP agree."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import small_config
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(fashion_mnist_dir, tmp_path_factory):
    import ray
    from ray import serve

    from modelyard import stages
    from serving.deploy import deploy

    tmp = tmp_path_factory.mktemp("transfer")
    data_dir = tmp / "data"
    (data_dir / "raw").mkdir(parents=True)
    (data_dir / "raw" / "fashion_mnist").symlink_to(fashion_mnist_dir.parent / "raw" / "fashion_mnist")
    cfg = small_config(tmp, data_dir, recipe="fashion-transfer", data={"train_limit": 2000, "test_limit": 500},
                       train={"epochs": 8, "batch_size": 128})
    for stage in (stages.fetch, stages.validate, stages.augment, stages.train, stages.evaluate):
        stage(cfg)
    registered = stages.register(cfg)
    try:
        yield cfg, registered, deploy(cfg.serve, cfg.registry, model_name=cfg.model_name)
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def colour_jpeg(gray28: np.ndarray, size: tuple[int, int], tint: tuple[float, float, float]) -> bytes:
    """A real Fashion-MNIST image as a user might send it: enlarged, in colour, JPEG-compressed."""
    big = np.asarray(Image.fromarray(gray28).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    rgb = np.stack([big * t for t in tint], axis=-1).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def test_the_task_is_registered_under_its_own_name_and_promoted(served):
    cfg, registered, serving = served
    assert cfg.model_name == "fashion-mnist-efficientnet-lite0" == serving["name"]
    assert registered["promoted"] and registered["alias"] == "champion"
    assert registered["model_uri"] == f"models:/fashion-mnist-efficientnet-lite0/{registered['version']}"


def test_colour_jpegs_of_other_sizes_are_answered_like_the_original_images(served, test_sample, class_names):
    from modelyard.inference import Predictor

    cfg, registered, serving = served
    predictor = Predictor.from_dir(Path(cfg.train.output_dir) / "model")
    n = 80  # enough images that one answer either way does not decide the bounds below
    gray_answers = predictor.predict_proba(test_sample.images[:n]).argmax(1)
    gray_right = int((gray_answers == test_sample.labels[:n]).sum())
    same, right = 0, 0
    for i in range(n):
        jpeg = colour_jpeg(test_sample.images[i], (120 + 3 * i, 90 + 2 * i), (1.0, 0.85, 0.7))
        resp = requests.post(f"{serving['url']}/predict", files={"file": (f"{i}.jpg", jpeg, "image/jpeg")}, timeout=60)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model"] == {"name": cfg.model_name, "version": registered["version"]}
        # HTTP and the offline Predictor agree on the same bytes (no preprocessing drift in serving)
        offline = predictor.predict(predictor.decode(jpeg)[None])[0]
        assert body["index"] == offline.index
        assert body["scores"][offline.label] == pytest.approx(offline.scores[offline.label], abs=1e-4)
        same += body["index"] == gray_answers[i]
        right += body["label"] == class_names[test_sample.labels[i]]
    print(f"tinted, enlarged JPEGs: {same}/{n} read as the 28x28 originals; {right} right against {gray_right}")
    # The enlarged, tinted JPEG mostly reads as the original 28x28 image did (81% here), and about as
    # correctly (a frozen backbone's head on 2k images: ~65-75%; chance is 8 in 80). A resize or colour
    # conversion gone wrong in serving reads at chance instead.
    assert same >= 0.75 * n, same
    assert right >= max(gray_right - 0.15 * n, 0.5 * n), (right, gray_right)


def test_reload_and_pyfunc_agree_with_the_trained_model(served, test_sample):
    import mlflow.pyfunc

    from modelyard.inference import Predictor

    cfg, registered, _ = served
    uri = cfg.registry.resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}@champion")
    reloaded = Predictor.from_dir(Path(cfg.train.output_dir) / "model")
    out = pyfunc.predict(test_sample.images[:100])
    assert (out["index"].to_numpy() == reloaded.predict_proba(test_sample.images[:100]).argmax(1)).all()
