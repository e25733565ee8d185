"""infra/uv_pip.py: `make setup` runs uv with the sources pip is configured with, read from pip itself."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from helpers.paths import REPO

SCRIPT = REPO / "infra" / "uv_pip.py"


@pytest.fixture()
def uv_pip():
    spec = importlib.util.spec_from_file_location("uv_pip", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def pip_conf(tmp_path, monkeypatch):
    """Write a pip.conf that wins over the machine's (/etc/pip.conf, ~/.config/pip, PIP_* variables); with no
    text, pip reads no configuration file at all (PIP_CONFIG_FILE=/dev/null)."""
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)

    def write(text: str) -> None:
        (tmp_path / "pip.conf").write_text(text)
        monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "pip.conf") if text else os.devnull)

    return write


def test_every_source_pip_is_configured_with_reaches_uv(uv_pip, pip_conf):
    pip_conf("[global]\nfind-links = /opt/wheels\nextra-index-url = file:///a/simple file:///b/simple\n"
             "constraint = /etc/cap.txt\n[install]\nindex-url = https://mirror/simple\n")
    args = uv_pip.uv_args(uv_pip.pip_config(sys.executable))
    pairs = list(zip(args[::2], args[1::2]))
    assert ("--find-links", "/opt/wheels") in pairs and ("--constraint", "/etc/cap.txt") in pairs
    assert [v for k, v in pairs if k == "--extra-index-url"] == ["file:///a/simple", "file:///b/simple"]
    assert ("--index-url", "https://mirror/simple") in pairs
    # pip's choice: the best version on any index.
    assert pairs[-1] == ("--index-strategy", "unsafe-best-match")


def test_a_pip_variable_wins_over_the_file_as_it_does_for_pip(uv_pip, pip_conf, monkeypatch):
    pip_conf("[global]\nfind-links = /from/file\n")
    monkeypatch.setenv("PIP_FIND_LINKS", "/from/env")
    args = uv_pip.uv_args(uv_pip.pip_config(sys.executable))
    assert "/from/env" in args and "/from/file" not in args


def test_pips_ca_bundle_reaches_uv_unless_one_is_set(uv_pip, pip_conf):
    pip_conf("[global]\ncert = /etc/corp-ca.pem\n")
    config = uv_pip.pip_config(sys.executable)
    assert uv_pip.uv_env(config, {})["SSL_CERT_FILE"] == "/etc/corp-ca.pem"
    assert uv_pip.uv_env(config, {"SSL_CERT_FILE": "/mine.pem"})["SSL_CERT_FILE"] == "/mine.pem"


def test_nothing_configured_gives_uv_its_defaults(uv_pip, pip_conf):
    pip_conf("")
    config = uv_pip.pip_config(sys.executable)
    assert uv_pip.uv_args(config) == ["--index-strategy", "unsafe-best-match"]
    assert "SSL_CERT_FILE" not in uv_pip.uv_env(config, {})
