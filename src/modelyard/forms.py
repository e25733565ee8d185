"""The Prefect deployment's form: what it is prefilled with, and the run a filled-in form asks for.

The form shows params.yaml's run section by section, with the model family's every field (its defaults
included), so a person sees what will run. A recipe picked in the form is applied over params.yaml, and only
the fields the person changed are applied over the recipe: a prefilled field left as it was must not undo
the recipe.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from modelyard.config import ConfigError, PipelineConfig, changed_sections, field_marker, load_config
from modelyard.models import family_config

FORM_SECTIONS = ("model", "train", "data", "prepare", "registry")
NO_RECIPE = "params.yaml"  # the recipe field's choice for "the parameter file as it is"


def form_defaults(params_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sections of params.yaml's run as the form shows them (the family's every field resolved)."""
    cfg = load_config(params_path)
    dump = cfg.model_dump(mode="json", by_alias=True) | {"model": family_config(cfg.model).model_dump(mode="json")}
    return {section: dump[section] for section in FORM_SECTIONS}


def config_from_form(params_path: str | os.PathLike[str], recipe: str | None, sections: dict[str, Any]) -> PipelineConfig:
    """params.yaml, then the recipe picked, then what the form changed; the model section checked against its
    family here, where the run enters."""
    recipe = None if recipe in (None, NO_RECIPE) else recipe
    cfg = load_config(params_path, {"recipe": recipe} if recipe else None)
    changed = changed_sections(sections, form_defaults(params_path))
    cfg = cfg.with_overrides(changed)
    family_config(cfg.model)
    refuse_paths_outside_roots(cfg, changed)
    return cfg


class FormError(ConfigError):
    """A flow run's parameters ask for something only the runner's own files may set."""


def refuse_paths_outside_roots(cfg: PipelineConfig, changed: dict[str, Any]) -> None:
    """A flow run's parameters come from whoever reaches the Prefect API, and the run executes as the runner:
    a changed `path` field (weights, a tokenizer folder) must name a file inside the runner's data or artifact
    roots or be one of the field's named choices (`auto`, a hub id), and a `runner` field (the tracking URI)
    cannot change at all. Raises FormError naming the field."""
    roots = [Path(cfg.paths.data_dir).resolve(), Path(cfg.paths.artifacts_dir).resolve()]
    for section, values in changed.items():
        model: type[BaseModel] = type(family_config(cfg.model)) if section == "model" else type(getattr(cfg, section))
        for key, value in values.items():
            marker = field_marker(model, key)
            if marker == "runner":
                raise FormError(f"{section}.{key} is the runner's setting (its params file and environment); "
                                f"a flow run's parameters cannot change it")
            if marker == "path" and isinstance(value, str) and _names_a_path(value):
                where = Path(value).expanduser().resolve()
                if not any(where.is_relative_to(root) for root in roots):
                    raise FormError(f"{section}.{key}={value!r} names a path outside the runner's data and artifact "
                                    f"roots ({', '.join(map(str, roots))}); a flow run may only name files inside them")


def path_inside(value: str, root: str | os.PathLike[str], what: str, *,
                also: tuple[str | os.PathLike[str], ...] = ()) -> Path:
    """A flow run's file parameter, `value`, relative to `root` (or absolute): the resolved path (symbolic links
    followed) when it lies inside `root` or one of `also`; FormError naming `what` otherwise."""
    base = Path(root).resolve()
    where = (base / Path(value).expanduser()).resolve()
    allowed = [base, *(Path(a).resolve() for a in also)]
    if not value.strip() or not any(where.is_relative_to(r) for r in allowed):
        raise FormError(f"{what}={value!r} is outside {', '.join(map(str, allowed))}; a flow run may only name files "
                        f"inside them")
    return where


def _names_a_path(value: str) -> bool:
    """Whether `value` would be read as a filesystem path rather than a named choice (`auto`, a hub id)."""
    return value.startswith(("/", "~", ".")) or os.sep in value or "\\" in value or Path(value).exists()
