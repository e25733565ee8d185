"""modelyard.runtime: a Ray the CLI or `dvc repro` starts for itself asks for a token, like the stack's, and
writes it nowhere (not in ~/.ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.integration

START = """
import json, os, sys, time
from modelyard.runtime import configure_environment, connect_ray
configure_environment()
connect_ray(None)
import ray
ctx = ray.init(ignore_reinit_error=True)
print(json.dumps({"gcs": ray._private.worker.global_worker.node.gcs_address,
                  "dashboard": ctx.dashboard_url, "token": os.environ["RAY_AUTH_TOKEN"]}), flush=True)
sys.stdin.read()  # until the test is done
"""
JOIN = "import ray, sys; ray.init(address=sys.argv[1]); print('joined')"


def _refused_join(gcs: str, env: dict[str, str]) -> tuple[str, str]:
    """A driver's attempt to join, stopped after 8 s (Ray keeps retrying a refused connection)."""
    join = subprocess.Popen([sys.executable, "-c", JOIN, gcs], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        return join.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        join.kill()
        return join.communicate()


def test_a_private_ray_refuses_whoever_lacks_its_token_and_leaves_home_alone(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # No Ray variable of the test's own; the one switch that keeps a client's 127.0.0.1 from being swapped for
    # a routable address (which nothing listens on).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {
        "HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    ray_proc = subprocess.Popen([sys.executable, "-c", START], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        info = json.loads(ray_proc.stdout.readline())
        assert len(info["token"]) == 64
        # The dashboard (Ray's HTTP API: jobs, logs) answers 401 without the token, 200 with it.
        url = f"http://{info['dashboard']}/api/version"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {info['token']}"})
        assert urllib.request.urlopen(request, timeout=10).status == 200
        # A driver without the token (or with another one) is refused by the GCS.
        for extra in ({}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
            out, err = _refused_join(info["gcs"], env | extra)
            assert "joined" not in out and "InvalidAuthToken" in err, err[-2000:]
        joined = subprocess.run([sys.executable, "-c", JOIN, info["gcs"]], capture_output=True, text=True, timeout=120,
                                env=env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": info["token"]})
        assert joined.stdout.strip().endswith("joined"), joined.stderr[-2000:]
    finally:
        ray_proc.stdin.close()
        ray_proc.wait(120)
    assert not (home / ".ray").exists()
