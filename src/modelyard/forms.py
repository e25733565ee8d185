"""The Prefect deployment's form: what it is prefilled with, and the run a filled-in form asks for.

The form shows params.yaml's run section by section, with the model family's every field (its defaults
included), so a person sees what will run. A recipe picked in the form is applied over params.yaml, and only
the fields the person changed are applied over the recipe: a prefilled field left as it was must not undo
the recipe.
"""

from __future__ import annotations

import os
from typing import Any

from modelyard.config import PipelineConfig, changed_sections, load_config
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
    cfg = cfg.with_overrides(changed_sections(sections, form_defaults(params_path)))
    family_config(cfg.model)
    return cfg
