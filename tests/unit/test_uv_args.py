"""infra/uv_args.py: `make setup` installs with uv from the sources pip is configured with, read from pip itself."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "uv_args.py"


def uv_args_for(tmp_path: Path, config: str, **env: str) -> list[str]:
    spec = importlib.util.spec_from_file_location("uv_args", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "pip.conf").write_text(config)
    saved = dict(os.environ)
    try:
        # only this file: not the machine's /etc/xdg/pip or ~/.config/pip
        os.environ.update({"PIP_CONFIG_FILE": str(tmp_path / "pip.conf"), "XDG_CONFIG_DIRS": str(tmp_path / "no"),
                           "XDG_CONFIG_HOME": str(tmp_path / "no"), **env})
        for name in [n for n in os.environ if n.startswith("PIP_") and n != "PIP_CONFIG_FILE" and n not in env]:
            del os.environ[name]
        return module.uv_args(module.pip_config(sys.executable))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_every_source_pip_is_configured_with_reaches_uv(tmp_path):
    args = uv_args_for(tmp_path, "[global]\nfind-links = /opt/wheels\nextra-index-url = file:///a/simple "
                       "file:///b/simple\nconstraint = /etc/cap.txt\n[install]\nindex-url = https://mirror/simple\n")
    pairs = list(zip(args[::2], args[1::2]))
    assert ("--find-links", "/opt/wheels") in pairs and ("--constraint", "/etc/cap.txt") in pairs
    assert [v for k, v in pairs if k == "--extra-index-url"] == ["file:///a/simple", "file:///b/simple"]
    assert ("--index-url", "https://mirror/simple") in pairs
    assert pairs[-1] == ("--index-strategy", "unsafe-best-match")  # pip's choice: the best version on any index


def test_a_pip_variable_wins_over_the_file_as_it_does_for_pip(tmp_path):
    args = uv_args_for(tmp_path, "[global]\nfind-links = /from/file\n", PIP_FIND_LINKS="/from/env")
    assert "/from/env" in args and "/from/file" not in args


def test_nothing_configured_gives_uv_its_defaults(tmp_path):
    assert uv_args_for(tmp_path, "") == ["--index-strategy", "unsafe-best-match"]
