"""Run `uv pip ...` with the sources pip is configured with: `python infra/uv_pip.py install -r requirements.lock`.

`make setup` installs the pinned stack with uv, which unpacks and byte-compiles on every core where pip uses
one, but uv reads no pip configuration. A machine whose pip.conf (or PIP_* variables) names a wheel folder, a
local index, a constraints file (a version cap) or a CA bundle must give uv the same, or uv would resolve
elsewhere or fail on TLS. This asks pip for its effective configuration (`pip config list`), turns it into
uv's options, and runs the `uv` installed beside this Python with them after the arguments it was given.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

# pip option -> uv option; each may hold several whitespace-separated values
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
           "constraint": "--constraint"}
PRECEDENCE = ("global", "install", ":env:")  # pip's: a PIP_* variable beats the [install] section beats [global]


def pip_config(python: str) -> dict[str, str]:
    """`pip config list` as {option: value}, each option from the scope pip itself would take it from."""
    listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True)
    scopes: dict[str, dict[str, str]] = {scope: {} for scope in PRECEDENCE}
    for line in listed.stdout.splitlines():
        key, sep, value = line.partition("=")
        scope, _, option = key.rpartition(".")
        if sep and scope in scopes:
            scopes[scope][option] = ast.literal_eval(value)
    return {option: value for scope in PRECEDENCE for option, value in scopes[scope].items()}


def uv_args(config: dict[str, str]) -> list[str]:
    args = []
    for option, flag in OPTIONS.items():
        for value in config.get(option, "").split():
            args += [flag, value]
    # pip picks the best version across every index; uv's default would stop at the first index that has it
    return args + ["--index-strategy", "unsafe-best-match"]


def uv_env(config: dict[str, str], environ: dict[str, str]) -> dict[str, str]:
    """The environment for uv: pip's CA bundle as SSL_CERT_FILE, unless one is set already."""
    env = dict(environ)
    if config.get("cert") and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = config["cert"]
    return env


def main(argv: list[str]) -> int:
    config = pip_config(sys.executable)
    uv = Path(sys.executable).parent / "uv"
    command = [str(uv), "pip", *argv, *uv_args(config)]
    return subprocess.run(command, env=uv_env(config, dict(os.environ))).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
