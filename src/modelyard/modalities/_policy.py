"""What the modalities' augmentation policies share: building one from a mapping of settings by name, with an
unknown name or a value of the wrong kind refused naming the setting."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

P = TypeVar("P")


def policy_from(cls: type[P], doc: Mapping[str, Any], modality: str) -> P:
    """`cls(**doc)` for a frozen dataclass of numbers (and pairs of numbers), checked setting by setting."""
    defaults = {f.name: f.default for f in fields(cls)}
    unknown = sorted(set(doc) - set(defaults))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not {_a(modality)} augmentation setting; the {modality} policy has "
                         f"{', '.join(sorted(defaults))}")
    return cls(**{name: _checked(name, value, defaults[name]) for name, value in doc.items()})


def _checked(name: str, value: Any, default: Any) -> Any:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, tuple):
        if isinstance(value, (list, tuple)) and len(value) == len(default) and \
                all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return tuple(value)
        raise ValueError(f"{name} must be a pair of numbers like {list(default)}, got {value!r}")
    if isinstance(default, int) and not (number and float(value).is_integer()):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not number:
        raise ValueError(f"{name} must be a number, got {value!r}")
    return int(value) if isinstance(default, int) else float(value)


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"
