"""Model families: one module per family, found by its file name (`cnn.py` is the family `cnn`).

A family module defines `Config`, its typed config (a pydantic model whose `name` is the family's name, its
fields with their defaults and help text), and `build(**args) -> nn.Module`, the builder `model.json` stores
the arguments of, so a saved model rebuilds without training code. `Config` declares what the family needs:
the modalities it takes, the pip packages a registered model imports, what it asks of its modality's
preprocessor, how it splits into a frozen backbone and a head, and its parameter groups. Families whose
dependencies are heavy (timm, transformers) import them inside `build`. Adding a family is adding its module
and a recipe that uses it.

This package's own module imports no torch, so listing and checking families is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from modelyard.plugins import load_member, member_names

if TYPE_CHECKING:
    from torch import nn

PACKAGE = __name__
ParamGroups = list[tuple[str, list, float]]  # (name, parameters, learning-rate factor)


class FamilyConfig(BaseModel):
    """What every family's config answers; the defaults suit a model trained from scratch on the data as is."""

    # Titled by the family's name: what a form (the Prefect UI's) labels each choice of the union with.
    model_config = ConfigDict(extra="forbid", validate_assignment=True,
                              model_title_generator=lambda cls: cls.model_fields["name"].default)

    modalities: ClassVar[tuple[str, ...]]  # the kinds of input it takes (members of modelyard.modalities)
    runtime_packages: ClassVar[tuple[str, ...]] = ()  # pip packages its registered models import to load

    def preprocessing(self) -> dict[str, Any]:
        """What it asks of its modality's preprocessor (image_size, channels, normalization; tokenizer,
        max_length); each modality reads the options it knows."""
        return {}

    def builder_args(self, model_input: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
        """The arguments of `build`, from what the fitted preprocessor says of the input."""
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> None:
        """Load pretrained weights, freeze what is frozen: called once before training, never at load time."""

    def frozen_parts(self, model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        """(backbone, head) when the backbone is frozen: its outputs can then be computed once when nothing
        upstream is augmented, and only the head trains. None when every layer trains."""
        return None

    def param_groups(self, model: nn.Module) -> ParamGroups:
        """(group name, parameters, learning-rate factor); frozen parameters are left out."""
        return [("all", [p for p in model.parameters() if p.requires_grad], 1.0)]


def family_names() -> tuple[str, ...]:
    return member_names(PACKAGE)


def config_class(name: str) -> type[FamilyConfig]:
    return load_member(PACKAGE, name, kind="model family").Config


def family_config(section: Any) -> FamilyConfig:
    """The typed config of the family a `model` section names (its other keys are the family's fields)."""
    if isinstance(section, FamilyConfig):
        return section
    values = section.model_dump() if isinstance(section, BaseModel) else dict(section)
    name = values.get("name")
    try:
        return config_class(name).model_validate(values)
    except ValidationError as exc:
        raise ValueError(f"model ({name}): {exc}") from None


def build_model(family: str, **args: Any) -> nn.Module:
    """Build a model of a registered family from its builder arguments (what model.json stores)."""
    return load_member(PACKAGE, family, kind="model family").build(**args)


def config_union() -> Any:
    """Every family's config as one union, told apart by `name` (each family's own literal): the Prefect form
    draws it as a family picker with each family's fields. (A discriminated union would be validated the same
    way, but its `oneOf` schema is drawn as a raw JSON editor.)"""
    return Union[tuple(config_class(name) for name in family_names())]  # noqa: UP007 (a runtime tuple of classes)
