"""infra/haproxy-bound, the HAProxy that Serve runs: only the stats and Prometheus sections' every-interface
binds move to the given address; the serving frontend (`bind *:<port>` when serve.host is 0.0.0.0), the
rest of the config and the arguments stay as Ray wrote them."""

import os
import subprocess

from helpers.config import REPO

CONFIG = """global
    stats socket /run/x/admin.sock mode 666 level admin
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind *:8000
backend app
    server r1 10.0.0.5:30001 check
listen stats
  bind *:8404
  stats enable
"""


def test_only_the_stats_and_metrics_binds_move_and_the_real_haproxy_gets_the_same_arguments(tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG)
    seen = tmp_path / "args"
    fake = tmp_path / "haproxy"  # stands in for the real binary: records the arguments it was given
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {seen}\n')
    fake.chmod(0o755)
    env = os.environ | {"MODELYARD_HAPROXY_BINARY": str(fake), "MODELYARD_HAPROXY_ADMIN_ADDRESS": "10.88.0.11"}
    done = subprocess.run([str(REPO / "infra" / "haproxy-bound"), "-db", "-f", str(config), "-sf", "123"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert config.read_text() == (CONFIG.replace("bind :9101", "bind 10.88.0.11:9101")
                                  .replace("bind *:8404", "bind 10.88.0.11:8404"))
    assert seen.read_text().split() == ["-db", "-f", str(config), "-sf", "123"]


def test_with_no_address_given_they_go_to_loopback_and_a_missing_binary_is_named(tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_HAPROXY")}
    env |= {"MODELYARD_HAPROXY_BINARY": "/bin/true"}
    assert subprocess.run([str(REPO / "infra" / "haproxy-bound"), "-f", str(config)], env=env, timeout=30).returncode == 0
    assert "bind 127.0.0.1:8404" in config.read_text() and "bind *:8000" in config.read_text()
    env["MODELYARD_HAPROXY_BINARY"] = str(tmp_path / "nothing-here")
    missing = subprocess.run([str(REPO / "infra" / "haproxy-bound"), "-f", str(config)], env=env, capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode == 127 and "no HAProxy binary" in missing.stderr
