"""Print the `uv pip install` options that make uv install from where pip is configured to.

`make setup` installs the pinned stack with uv (it unpacks and byte-compiles in parallel; pip does both on one
core) but uv reads no pip configuration. A machine whose pip.conf names a wheel folder, a local index or a
constraints file (a version cap, a mirror) must give uv the same sources, or uv would resolve elsewhere. This
asks pip for its effective configuration (`pip config list`: files and PIP_* variables alike) and prints one
option per line; `make setup` passes them on. Nothing configured prints nothing but the index strategy.
"""

from __future__ import annotations

import ast
import subprocess
import sys

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


if __name__ == "__main__":
    print("\n".join(uv_args(pip_config(sys.argv[1] if len(sys.argv) > 1 else sys.executable))))
