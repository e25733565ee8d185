"""Registries that find their members: a member is a module (or package) of a registry package.

Datasets (`modelyard.data.datasets`), model families (`modelyard.models`) and modalities
(`modelyard.modalities`) are each a package whose public modules are its members, named after the module:
adding one is adding a file. Names are listed from the package's directory without importing anything, so
a config can check a name cheaply; a member is imported when it is first used.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from types import ModuleType


class UnknownNameError(KeyError):
    """A name that is not a member of its registry; the message lists the members there are."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0])


def member_names(package: str) -> tuple[str, ...]:
    """The public modules and subpackages of `package`, sorted; nothing is imported but the package's parents."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{package} is not a package")
    return tuple(sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)
                        if not m.name.startswith("_")))


def load_member(package: str, name: str, *, kind: str) -> ModuleType:
    """Import the member `name` of `package`; an unknown name is an error naming the known ones."""
    names = member_names(package)
    if name not in names:
        raise UnknownNameError(f"unknown {kind} {name!r}; available: {', '.join(names)}")
    return importlib.import_module(f"{package}.{name}")
