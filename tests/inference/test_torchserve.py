"""`modelyard export torchserve`: a .mar built by the real torch-model-archiver from a registered version,
served by a real TorchServe (Java, started here, token authorization on), answering real test images and
review texts exactly as Ray Serve answers them for the same versions; bad inputs get 4xx from both."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from helpers.config import REPO
from helpers.ports import free_port
from helpers.serving import png, serve_small_model
from modelyard.data.dataset import load_split

pytestmark = [pytest.mark.slow, pytest.mark.integration,
              pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe's frontend needs Java 11+ "
                                 "(apt-get install openjdk-17-jre-headless)")]

IMAGES, TEXTS = "ts-fashion", "ts-rt"


@pytest.fixture(scope="module")
def servers(small_dataset_dir, rt_polarity_dir, class_names, test_sample, tmp_path_factory):
    """(Ray Serve base URL per task, TorchServe predictions URL per task, TorchServe's inference token)."""
    import ray

    from helpers.models import register_text_lstm
    from serving.deploy import deploy

    tmp = tmp_path_factory.mktemp("torchserve")
    cfg, uri, image_url = serve_small_model(tmp, IMAGES, small_dataset_dir, class_names, test_sample)
    register_text_lstm(uri, TEXTS, rt_polarity_dir, tmp)
    deploy(cfg.serve, cfg.registry, model_name=TEXTS, tracking_uri=uri)
    text_url = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(TEXTS)}"

    store = tmp / "store"
    for task in (IMAGES, TEXTS):  # the CLI, as a user runs it
        cli = subprocess.run([str(Path(sys.executable).parent / "modelyard"), "export", "torchserve", task, "--out", str(store),
                              "-S", f"registry.tracking_uri={uri}"], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
        assert cli.returncode == 0, cli.stderr[-3000:]
    process, url, token = start_torchserve(tmp / "ts", store, [IMAGES, TEXTS])
    try:
        yield {IMAGES: image_url, TEXTS: text_url}, {t: f"{url}/predictions/{t}" for t in (IMAGES, TEXTS)}, token
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        ray.shutdown()


def start_torchserve(workdir: Path, store: Path, models: list[str]) -> tuple[subprocess.Popen, str, str]:
    """TorchServe in the foreground of its own process group, every address on 127.0.0.1; waits until each
    model answers. Returns (process, inference URL, inference token from its key file)."""
    workdir.mkdir(parents=True)
    ports = {name: free_port() for name in ("inference", "management", "metrics")}
    (workdir / "config.properties").write_text("\n".join([
        *(f"{name}_address=http://127.0.0.1:{port}" for name, port in ports.items()),
        f"model_store={store}", "default_workers_per_model=1", "install_py_dep_per_model=false",
        "disable_system_metrics=true", ""]))
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TS_DISABLE_SYSTEM_METRICS": "true"}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "torchserve"), "--start", "--foreground", "--ncs", "--model-store", str(store),
         "--ts-config", str(workdir / "config.properties"),
         "--models", *[f"{m}={m}.mar" for m in models]],
        cwd=workdir, env=env, stdout=open(workdir / "torchserve.out", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{ports['inference']}"
    deadline = time.monotonic() + 180
    token = None
    while time.monotonic() < deadline:
        assert process.poll() is None, (workdir / "torchserve.out").read_text()[-3000:]
        if token is None and (workdir / "key_file.json").is_file():
            token = json.loads((workdir / "key_file.json").read_text())["inference"]["key"]
        if token is not None:
            try:
                ready = [requests.get(f"{url}/ping", headers=bearer(token), timeout=5).ok] + [
                    requests.options(f"{url}/predictions/{m}", headers=bearer(token), timeout=5).status_code != 404
                    for m in models]
                if all(ready) and _models_loaded(ports["management"], workdir, models):
                    return process, url, token
            except requests.RequestException:
                pass
        time.sleep(1)
    os.killpg(process.pid, signal.SIGTERM)
    raise AssertionError("TorchServe did not load the models in 180 s: " + (workdir / "torchserve.out").read_text()[-3000:])


def _models_loaded(port: int, workdir: Path, models: list[str]) -> bool:
    key = json.loads((workdir / "key_file.json").read_text())["management"]["key"]
    for m in models:
        resp = requests.get(f"http://127.0.0.1:{port}/models/{m}", headers=bearer(key), timeout=5)
        if not resp.ok or not any(w.get("status") == "READY" for w in resp.json()[0].get("workers", [])):
            return False
    return True


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_torchserve_answers_real_images_as_ray_serve_does(servers, test_sample):
    ray_serve, torchserve, token = servers
    for image in test_sample.images[:24]:
        data = png(np.ascontiguousarray(image))
        theirs = requests.post(f"{ray_serve[IMAGES]}/predict", files={"file": ("x.png", data, "image/png")}, timeout=60)
        mine = requests.post(torchserve[IMAGES], data=data, headers=bearer(token), timeout=60)
        assert theirs.status_code == mine.status_code == 200, mine.text
        a, b = theirs.json(), mine.json()
        assert (b["label"], b["index"], b["model"]) == (a["label"], a["index"], a["model"])
        assert b["scores"] == pytest.approx(a["scores"], abs=1e-5)


def test_torchserve_answers_real_texts_as_ray_serve_does(servers, rt_polarity_dir):
    ray_serve, torchserve, token = servers
    texts = load_split(rt_polarity_dir, "test").texts[:12]
    for text in texts:
        theirs = requests.post(f"{ray_serve[TEXTS]}/predict", json={"text": text}, timeout=60)
        mine = requests.post(torchserve[TEXTS], json={"text": text}, headers=bearer(token), timeout=60)
        assert theirs.status_code == mine.status_code == 200, mine.text
        a, b = theirs.json(), mine.json()
        assert {k: v for k, v in b.items() if k != "scores"} == {k: v for k, v in a.items() if k != "scores"}
        assert b["scores"] == pytest.approx(a["scores"], abs=1e-5)
    many = requests.post(torchserve[TEXTS], json={"texts": list(texts[:3])}, headers=bearer(token), timeout=60).json()
    assert [p["label"] for p in many["predictions"]] == [
        requests.post(f"{ray_serve[TEXTS]}/predict", json={"text": t}, timeout=60).json()["label"] for t in texts[:3]]


@pytest.mark.parametrize("task, body, code", [
    (IMAGES, b"", "empty_body"),
    (IMAGES, b"hello, I am not an image", "not_an_image"),
    (TEXTS, b'{"text": ""}', "empty_text"),
    (TEXTS, b"not json", "bad_json"),
])
def test_bad_inputs_get_a_4xx_naming_the_problem(servers, task, body, code):
    _, torchserve, token = servers
    resp = requests.post(torchserve[task], data=body, headers=bearer(token) | {"Content-Type": "application/json"}
                         if task == TEXTS else bearer(token), timeout=60)
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    assert code in resp.text, resp.text


def test_torchserve_asks_for_its_token(servers):
    _, torchserve, _ = servers
    assert requests.post(torchserve[IMAGES], data=b"x", timeout=30).status_code in (400, 401, 403)
