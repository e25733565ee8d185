"""Serving test tools: schemathesis against an app's own OpenAPI document."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCHEMATHESIS_CONFIG = Path(__file__).resolve().parents[1] / "schemathesis.toml"


def fuzz_openapi(app_url: str, workdir: Path, max_time_s: int = 30) -> subprocess.CompletedProcess:
    """schemathesis (`st run`, every check) against the app's own /openapi.json; see tests/schemathesis.toml.
    It runs in `workdir`, where it keeps its example database."""
    st = Path(sys.executable).with_name("st")
    return subprocess.run(
        [str(st), "--config-file", str(SCHEMATHESIS_CONFIG), "run", f"{app_url}/openapi.json", "--url", app_url,
         "--checks", "all", "--max-time", str(max_time_s), "--no-color"],
        capture_output=True, text=True, timeout=max_time_s + 120, cwd=workdir,
    )


def png(image) -> bytes:
    """A real image (uint8 array) as PNG bytes, what a client uploads."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.squeeze()).save(buf, format="PNG")
    return buf.getvalue()


def serve_small_model(tmp: Path, name: str, dataset_dir: Path, class_names: list[str], test_sample, **serve: object):
    """A small MLP trained here for an epoch on real Fashion-MNIST, registered as `name`'s champion and served by
    Ray Serve on a local Ray; returns (config, tracking uri, the task's base URL). The caller shuts Ray down."""
    import numpy as np

    from helpers.config import small_config
    from helpers.models import make_model, register
    from serving.deploy import deploy

    cfg = small_config(tmp, serve={"replicas": 2, **serve})
    uri = cfg.registry.resolved_tracking_uri()
    model_dir = make_model(tmp, "v1", dataset_dir, class_names, train_epochs=1)
    assert register(uri, name, model_dir, dataset_dir, "hash-A", np.ascontiguousarray(test_sample.images[:2])).promoted
    deploy(cfg.serve, cfg.registry, model_name=name, tracking_uri=uri)
    return cfg, uri, f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route(name)}"
