"""Search spaces: which settings a search varies, and over what.

A space maps a dotted setting to a distribution, in plain data so that params files, recipes and the Prefect
form can all hold one:

    {"train.learning_rate": {"loguniform": [0.003, 0.3]},
     "model.hidden": {"choice": [256, 512, 1024]},
     "model.dropout": {"uniform": [0.0, 0.5]},
     "train.epochs": {"int": [10, 30]},
     "prepare.augment.hflip_prob": {"uniform": [0.0, 0.5]}}

The settings are `train.<field>`, `model.<field of the family>` and `prepare.augment.<policy setting>`. Each
family declares its own space as `SEARCH_SPACE` in its module (`modelyard.models.mlp`, ...); a recipe may
replace it (`"search": {...}` in modelyard.recipes), and a caller's space is merged over that (a setting
mapped to null is left out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from modelyard.config import PipelineConfig
from modelyard.models import PACKAGE, family_config
from modelyard.plugins import load_member

KINDS = ("uniform", "loguniform", "int", "choice")
SECTIONS = ("train.", "model.", "prepare.augment.")
# Settings a trial cannot change: the trial's own resources and where things are written come from the search.
FIXED = {"train.num_workers", "train.cpus_per_worker", "train.use_gpu", "train.storage", "train.max_failures",
         "train.seed", "model.name", "train.progress_every_s"}


class SearchSpaceError(ValueError):
    """A search space names a setting that does not exist, or a distribution that cannot be sampled."""


def family_space(family: str) -> dict[str, Any]:
    """The space a family declares (`SEARCH_SPACE` in its module); {} when it declares none."""
    return dict(getattr(load_member(PACKAGE, family, kind="model family"), "SEARCH_SPACE", {}))


def resolve_space(cfg: PipelineConfig, override: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The space of a search over `cfg`: its family's, or its recipe's when the recipe names one, with
    `override` merged over it; checked against `cfg` (raises SearchSpaceError naming what is wrong)."""
    from modelyard.recipes import recipe_search_space

    space = dict(recipe_search_space(cfg.recipe) if cfg.recipe else {}) or family_space(cfg.model.name)
    for key, value in (override or {}).items():
        if value is None:
            space.pop(key, None)
        else:
            space[key] = value
    if not space:
        raise SearchSpaceError(f"no search space: family {cfg.model.name} declares none and none was given")
    check_space(space, cfg)
    return space


def check_space(space: Mapping[str, Any], cfg: PipelineConfig) -> None:
    """Every key a setting of `cfg` a trial may change, every distribution well-formed, and both ends of each
    one a valid configuration (so no trial fails on a value its config refuses)."""
    for key, dist in space.items():
        if not isinstance(key, str) or not key.startswith(SECTIONS):
            raise SearchSpaceError(f"search space: {key!r} is not a setting; use train.<field>, model.<field> or "
                                   "prepare.augment.<setting>")
        if key in FIXED:
            raise SearchSpaceError(f"search space: {key} is set by the search itself, not per trial")
        kind, args = _parse(key, dist)
        for value in _corners(kind, args):
            try:
                apply(cfg, {key: value})
            except ValueError as exc:
                raise SearchSpaceError(f"search space: {key}={value!r} is not a valid setting: {exc}") from None


def _parse(key: str, dist: Any) -> tuple[str, list[Any]]:
    if not isinstance(dist, Mapping) or len(dist) != 1 or next(iter(dist)) not in KINDS:
        raise SearchSpaceError(f"search space: {key} must be one of {{{', '.join(f'{k}: [...]' for k in KINDS)}}}, "
                               f"got {dist!r}")
    kind, args = next(iter(dist.items()))
    if not isinstance(args, list | tuple) or not args:
        raise SearchSpaceError(f"search space: {key}: {kind} takes a list, got {args!r}")
    args = list(args)
    if kind == "choice":
        return kind, args
    if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise SearchSpaceError(f"search space: {key}: {kind} takes [low, high] numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise SearchSpaceError(f"search space: {key}: {kind} needs low < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise SearchSpaceError(f"search space: {key}: loguniform needs low > 0, got {args!r}")
    if kind == "int" and not all(float(a).is_integer() for a in args):
        raise SearchSpaceError(f"search space: {key}: int takes whole numbers, got {args!r}")
    return kind, args


def _corners(kind: str, args: list[Any]) -> list[Any]:
    if kind == "choice":
        return args
    if kind == "int":
        return [int(args[0]), int(args[1])]
    return [float(args[0]), float(args[1]) * (1 - 1e-9)]  # the high end itself is never drawn


def to_tune(space: Mapping[str, Any]) -> dict[str, Any]:
    """The space as Ray Tune's sampling domains (what OptunaSearch converts into Optuna's)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, dist in space.items():
        kind, args = _parse(key, dist)
        if kind == "uniform":
            out[key] = tune.uniform(*args)
        elif kind == "loguniform":
            out[key] = tune.loguniform(*args)
        elif kind == "int":
            out[key] = tune.randint(int(args[0]), int(args[1]) + 1)  # randint's upper end is exclusive
        else:
            out[key] = tune.choice(args)
    return out


def overrides(sample: Mapping[str, Any]) -> dict[str, Any]:
    """A flat trial configuration ({"train.learning_rate": 0.01, ...}) as config sections to merge."""
    nested: dict[str, Any] = {}
    for key, value in sample.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value.item() if hasattr(value, "item") else value  # numpy scalars from the sampler
    return nested


def apply(cfg: PipelineConfig, sample: Mapping[str, Any]) -> PipelineConfig:
    """`cfg` with a trial's sampled settings, validated (a ValueError names what the config refuses)."""
    trial = cfg.with_overrides(overrides(sample))
    family_config(trial.model)  # the family's own fields and bounds
    if any(k.startswith("prepare.augment.") for k in sample):
        from modelyard.data.datasets import get_dataset
        from modelyard.modalities import get_modality

        spec = get_dataset(trial.data.dataset)
        try:
            get_modality(spec.modality).policy(spec.augment, trial.prepare.augment)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None
    return trial


def describe(space: Mapping[str, Any]) -> list[str]:
    """One line per setting, for reports: `train.learning_rate: loguniform 0.003 .. 0.3`."""
    lines = []
    for key, dist in space.items():
        kind, args = _parse(key, dist)
        body = ", ".join(map(str, args)) if kind == "choice" else f"{_fmt(args[0])} .. {_fmt(args[1])}"
        lines.append(f"{key}: {kind} {body}")
    return lines


def _fmt(x: float) -> str:
    return f"{x:g}" if x == 0 or 1e-3 <= abs(x) < 1e4 or math.isnan(x) else f"{x:.1e}"
