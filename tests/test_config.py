"""modelyard.config: params.yaml's choices over the defaults written in code, recipes, overrides, the model
section checked against its family, and the registries' names as the choices of the dataset and family."""

from __future__ import annotations

import pytest

from helpers.paths import REPO
from modelyard.cli import parse_overrides
from modelyard.config import (
    ConfigError,
    PipelineConfig,
    PrepareConfig,
    RegistryConfig,
    TrainConfig,
    ValidateConfig,
    changed_sections,
    deep_merge,
    load_config,
    read_params,
)
from modelyard.models import family_config

PARAMS = REPO / "params.yaml"


def test_params_yaml_loads_and_matches_the_documented_defaults():
    cfg = load_config(PARAMS)
    assert cfg.data.dataset == "fashion_mnist"
    assert cfg.model.name == "cnn" and cfg.model.fields == {}
    assert cfg.train.num_workers == "auto" and cfg.train.mixed_precision == "auto"
    assert cfg.task_name == "fashion-mnist-cnn"
    assert cfg.serve.host == "127.0.0.1"
    # params.yaml lists only choices: every section it leaves empty is the code's defaults.
    assert cfg.train == TrainConfig() and cfg.prepare == PrepareConfig() and cfg.validate_ == ValidateConfig()
    assert cfg.recipe is None


def test_params_yaml_holds_only_choices_and_empty_sections():
    raw = read_params(PARAMS)
    assert raw["data"] == {"dataset": "fashion_mnist"} and raw["model"] == {"name": "cnn"}
    assert all(raw[s] == {} for s in ("validate", "prepare", "train", "evaluate", "registry", "serve"))


def test_overrides_merge_section_by_section():
    cfg = load_config(PARAMS, {"train": {"epochs": 3}, "model": {"width": 16}})
    assert (cfg.train.epochs, cfg.model.fields["width"]) == (3, 16)
    assert family_config(cfg.model).width == 16
    assert cfg.train.batch_size == load_config(PARAMS).train.batch_size  # untouched keys kept


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"train": {"epochs": 0}}, "epochs"),
        ({"train": {"mixed_precision": "fp8"}}, "mixed_precision"),
        ({"train": {"batch_size": 1, "num_workers": 2}}, "batch_size"),
        ({"train": {"num_workers": 0}}, "num_workers"),
        ({"train": {"num_workers": "many"}}, "num_workers"),
        ({"train": {"mixed_precision": "fp16", "use_gpu": False}}, "fp16"),
        ({"model": {"name": "transformer-xl"}},
         "unknown model family 'transformer-xl'; available: bert, cnn"),
        ({"data": {"dataset": "imagenet"}}, "unknown dataset 'imagenet'; available: bbc_news, cifar10"),
        ({"data": {"sources": []}}, "data.sources must name at least one source"),
        ({"train": {"epochz": 3}}, "epochz"),
        ({"prepare": {"val_fraction": 1.0}}, "val_fraction"),
        ({"registry": {"model_name": "bad name!"}}, "model_name"),
        ({"serve": {"autoscaling": {"min_replicas": 5, "max_replicas": 2}}}, "min_replicas (5) is above"),
        ({"nonsense": {"a": 1}}, "nonsense"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(overrides, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(PARAMS, overrides)
    assert needle in str(exc.value)


def test_missing_or_malformed_param_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- train\n- model\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections, got list"):
        load_config(listed)


def test_the_dataset_and_family_are_required(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("model:\n  name: cnn\n")
    with pytest.raises(ConfigError, match="data"):
        load_config(params)
    params.write_text("data:\n  dataset: fashion_mnist\n")
    with pytest.raises(ConfigError, match="model"):
        load_config(params)


def test_cli_overrides_parse_yaml_scalars():
    items = ["train.epochs=3", "train.use_gpu=false", "data.sources=[debian]", "data.train_limit=null"]
    assert parse_overrides(items) == {
        "train": {"epochs": 3, "use_gpu": False},
        "data": {"sources": ["debian"], "train_limit": None},
    }


def test_cli_override_without_section_is_refused():
    import typer

    with pytest.raises(typer.BadParameter):
        parse_overrides(["epochs=3"])


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert RegistryConfig().resolved_tracking_uri() == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert RegistryConfig().resolved_tracking_uri() == "http://127.0.0.1:5000"
    assert RegistryConfig(tracking_uri="sqlite:////abs/x.db").resolved_tracking_uri() == "sqlite:////abs/x.db"


def test_flat_params_for_mlflow():
    cfg = load_config(PARAMS, {"recipe": "fashion-mlp"})
    flat = cfg.flat()
    assert flat["train.epochs"] == cfg.train.epochs == 24
    assert (flat["recipe"], flat["model.name"]) == ("fashion-mlp", "mlp")
    assert flat["data.dataset"] == "fashion_mnist"
    assert "validate.max_train_test_overlap" in flat and "prepare.val_fraction" in flat


def test_an_override_to_null_is_applied_not_skipped(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS.read_text().replace("  dataset: fashion_mnist\n",
                                                 "  dataset: fashion_mnist\n  train_limit: 500\n"))
    assert load_config(params).data.train_limit == 500
    # The CLI's `-S data.train_limit=null` must put the cap back to "everything".
    cfg = load_config(params, parse_overrides(["data.train_limit=null"]))
    assert cfg.data.train_limit is None


def test_a_section_left_empty_by_the_flow_form_keeps_the_file_values():
    base = load_config(PARAMS, {"train": {"epochs": 3}})
    changed = base.with_overrides({"train": None, "model": {"width": 8}})
    assert changed.train == base.train and changed.train.epochs == 3
    assert changed.model.fields == {"width": 8}


def test_deep_merge_keeps_null_inside_a_section_and_replaces_another_familys_fields():
    base = {"data": {"dataset": "fashion_mnist", "train_limit": 500}, "model": {"name": "cnn", "width": 8}}
    merged = deep_merge(base, {"data": {"train_limit": None}, "train": None, "model": {"dropout": 0.3}})
    assert merged == {"data": {"dataset": "fashion_mnist", "train_limit": None},
                      "model": {"name": "cnn", "width": 8, "dropout": 0.3}}
    switched = deep_merge(base, {"model": {"name": "mlp", "hidden": 64}})
    assert switched["model"] == {"name": "mlp", "hidden": 64}
    assert base["model"] == {"name": "cnn", "width": 8}  # the input is not modified


def test_a_recipe_applies_over_params_and_overrides_win_over_it():
    cfg = load_config(PARAMS, {"recipe": "fashion-transfer", "train": {"epochs": 3}})
    assert cfg.recipe == "fashion-transfer" and cfg.model.name == "transfer"
    assert cfg.model.fields["mode"] == "feature_extraction" and cfg.train.optimizer == "adamw"
    assert cfg.train.epochs == 3  # the override, not the recipe's 20
    assert cfg.train.learning_rate == 0.003  # the recipe's, not the default
    assert cfg.task_name == "fashion-mnist-transfer"
    assert load_config(PARAMS, {"recipe": "cifar10-resnet18"}).task_name == "cifar10-resnet18"
    named = load_config(PARAMS, {"recipe": "rt-bert", "registry": {"model_name": "sentiment"}})
    assert named.task_name == "sentiment"


def test_a_recipe_named_in_the_file_is_applied(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS.read_text().replace("recipe: null", "recipe: rt-lstm"))
    cfg = load_config(params)
    assert (cfg.recipe, cfg.data.dataset, cfg.model.name) == ("rt-lstm", "rt_polarity", "lstm")
    assert load_config(params, {"recipe": "fashion-mlp"}).model.name == "mlp"  # an override's recipe wins


def test_every_recipe_is_a_valid_configuration_for_its_family_and_dataset():
    from modelyard.data.datasets import get_dataset
    from modelyard.modalities import get_modality
    from modelyard.recipes import RECIPE_NAMES

    names = set()
    for recipe in RECIPE_NAMES:
        cfg = load_config(PARAMS, {"recipe": recipe})
        family = family_config(cfg.model)  # the family accepts every field the recipe sets
        spec = get_dataset(cfg.data.dataset)
        assert spec.modality in family.modalities, f"{recipe}: {family.name} cannot read {spec.modality} data"
        get_modality(spec.modality).policy(spec.augment, cfg.prepare.augment)  # its augment settings exist
        names.add(cfg.task_name)
    assert {"fashion-mnist-cnn", "fashion-mnist-mlp", "fashion-mnist-transfer", "fashion-mnist-resnet18",
            "cifar10-resnet18", "rt-polarity-bert", "rt-polarity-lstm", "bbc-news-bert"} <= names


def test_an_unknown_recipe_names_the_known_ones():
    known = "unknown recipe 'fashion-gan'; available: fashion-cnn, fashion-mlp"
    with pytest.raises(ConfigError, match=known):
        load_config(PARAMS, {"recipe": "fashion-gan"})


def test_switching_family_drops_the_old_familys_fields_but_a_foreign_field_is_an_error():
    cfg = load_config(PARAMS, {"model": {"name": "cnn", "width": 8}})
    switched = cfg.with_overrides({"model": {"name": "mlp", "hidden": 64}})
    assert switched.model.name == "mlp" and switched.model.fields == {"hidden": 64}
    mlp = family_config(switched.model)
    assert mlp.hidden == 64 and not hasattr(mlp, "width")
    # The config holds the section as given; the family refuses a field it does not have, naming it.
    foreign = load_config(PARAMS, {"model": {"hidden": 64}})  # cnn has no `hidden`: not swallowed
    with pytest.raises(ValueError, match=r"(?s)model \(cnn\).*\nhidden\n"):
        family_config(foreign.model)
    with pytest.raises(ValueError, match=r"(?s)model \(cnn\).*\nwidht\n"):
        family_config(load_config(PARAMS, {"model": {"widht": 64}}).model)
    with pytest.raises(ValueError, match="width"):
        family_config(load_config(PARAMS, {"model": {"width": 2}}).model)  # below the family's bound


def test_the_family_config_is_read_from_a_section_or_a_mapping():
    from modelyard.models.cnn import CNNConfig

    section = load_config(PARAMS, {"model": {"width": 16}}).model
    assert family_config(section) == CNNConfig(width=16) == family_config({"name": "cnn", "width": 16})
    typed = CNNConfig(width=16)
    assert family_config(typed) is typed


def test_the_cli_takes_a_recipe_among_the_overrides():
    assert parse_overrides(["recipe=fashion-mlp", "train.epochs=2"]) == {"recipe": "fashion-mlp",
                                                                         "train": {"epochs": 2}}


def test_dataset_and_family_choices_come_from_the_registries():
    from modelyard.data.datasets import dataset_names, get_dataset
    from modelyard.models import config_class, family_names

    schema = PipelineConfig.model_json_schema()
    assert schema["$defs"]["DataConfig"]["properties"]["dataset"]["enum"] == list(dataset_names())
    assert schema["$defs"]["ModelSection"]["properties"]["name"]["enum"] == list(family_names())
    assert {"fashion_mnist", "cifar10", "rt_polarity", "bbc_news"} <= set(dataset_names())
    for name in dataset_names():  # each module's spec is the dataset its file is named after
        assert get_dataset(name).name == name
    for name in family_names():
        assert config_class(name).model_fields["name"].default == name


def test_changed_sections_are_what_differs_from_the_base():
    base = load_config(PARAMS).model_dump(mode="json", by_alias=True)
    sections = {k: dict(base[k]) for k in ("train", "data", "model")}
    assert changed_sections(sections, base) == {}
    sections["train"]["epochs"] = 3
    sections["model"] = {"name": "mlp", "hidden": 64}
    assert changed_sections(sections | {"prepare": None}, base) == {
        "train": {"epochs": 3}, "model": {"name": "mlp", "hidden": 64}}
    assert changed_sections({"train": TrainConfig(epochs=3)}, base) == {"train": {"epochs": 3}}


def test_a_family_of_another_modality_is_refused_before_training(tmp_path, test_sample, class_names):
    """The config takes any family with any dataset; the training job refuses to fit a text model on
    images, naming both, before a model is built."""
    from modelyard.data.dataset import write_dataset
    from modelyard.data.prepare import prepare_splits
    from modelyard.training.job import prepare_job

    data = write_dataset(tmp_path / "fashion_mnist", {"train": test_sample, "test": test_sample}, class_names,
                         source="fixture", name="fashion_mnist", modality="image")
    cfg = load_config(PARAMS, {"model": {"name": "lstm"}})
    assert cfg.task_name == "fashion-mnist-lstm"
    prepared = prepare_splits(data, cfg.prepare, tmp_path / "prepared")
    with pytest.raises(ValueError, match=r"model\.name=lstm takes [a-z, ]*text[a-z, ]* input, but fashion_mnist "
                                         r"holds image data; pick a family that takes image"):
        prepare_job(family_config(cfg.model), cfg.train, data, prepared)
