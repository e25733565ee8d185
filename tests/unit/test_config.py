from pathlib import Path

import pytest

from modelyard.cli import parse_overrides
from modelyard.config import ConfigError, PipelineConfig, RegistryConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def test_params_yaml_loads_and_matches_the_documented_defaults():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.data.dataset == "fashion_mnist"
    assert cfg.model.name == "cnn"
    assert cfg.train.num_workers == "auto" and cfg.train.mixed_precision == "auto"
    assert cfg.model_name == "fashion-mnist-cnn"
    assert cfg.serve.host == "127.0.0.1"


def test_overrides_merge_section_by_section():
    cfg = load_config(REPO / "params.yaml", {"train": {"epochs": 3}, "model": {"width": 16}})
    assert (cfg.train.epochs, cfg.model.width) == (3, 16)
    assert cfg.train.batch_size == load_config(REPO / "params.yaml").train.batch_size  # untouched keys kept


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"train": {"epochs": 0}}, "epochs"),
        ({"train": {"mixed_precision": "fp8"}}, "mixed_precision"),
        ({"train": {"batch_size": 1, "num_workers": 2}}, "batch_size"),
        ({"train": {"num_workers": 0}}, "num_workers"),
        ({"train": {"num_workers": "many"}}, "num_workers"),
        ({"train": {"mixed_precision": "fp16", "use_gpu": False}}, "fp16"),
        ({"model": {"name": "transformer-xl"}}, "name"),
        ({"train": {"epochz": 3}}, "epochz"),
        ({"augment": {"erasing_scale": [0.5, 0.1]}}, "erasing_scale"),
        ({"registry": {"model_name": "bad name!"}}, "model_name"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(overrides, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(REPO / "params.yaml", overrides)
    assert needle in str(exc.value)


def test_missing_or_malformed_param_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_overrides_parse_yaml_scalars():
    assert parse_overrides(["train.epochs=3", "train.use_gpu=false", "data.sources=[debian]", "data.train_limit=null"]) == {
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
    flat = PipelineConfig().flat()
    assert flat["train.epochs"] == PipelineConfig().train.epochs
    assert "validate.max_train_test_overlap" in flat


def test_an_override_to_null_is_applied_not_skipped(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace("train_limit: null", "train_limit: 500"))
    assert load_config(params).data.train_limit == 500
    # The CLI's `-S data.train_limit=null` must put the cap back to "everything".
    cfg = load_config(params, parse_overrides(["data.train_limit=null"]))
    assert cfg.data.train_limit is None


def test_a_section_left_empty_by_the_flow_form_keeps_the_file_values():
    base = load_config(REPO / "params.yaml")
    assert base.with_overrides({"train": None, "model": {"width": 8}}).train == base.train


def test_a_recipe_applies_over_params_and_overrides_win_over_it():
    cfg = load_config(REPO / "params.yaml", {"recipe": "fashion-transfer", "train": {"epochs": 3}})
    assert cfg.recipe == "fashion-transfer" and cfg.model.name == "transfer"
    assert cfg.model.mode == "feature_extraction" and cfg.train.optimizer == "adamw"
    assert cfg.train.epochs == 3  # the override, not the recipe's 20
    assert cfg.model_name == "fashion-mnist-efficientnet-lite0"
    assert load_config(REPO / "params.yaml", {"recipe": "cifar10-resnet18"}).model_name == "cifar10-resnet18"


def test_every_recipe_is_a_valid_configuration():
    from modelyard.recipes import RECIPE_NAMES

    names = {load_config(REPO / "params.yaml", {"recipe": r}).model_name for r in RECIPE_NAMES}
    assert {"fashion-mnist-cnn", "fashion-mnist-mlp", "fashion-mnist-efficientnet-lite0", "cifar10-resnet18"} <= names


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown recipe 'fashion-gan'; available: fashion-cnn, fashion-mlp"):
        load_config(REPO / "params.yaml", {"recipe": "fashion-gan"})


def test_switching_family_drops_the_old_familys_fields_but_a_foreign_field_is_an_error():
    cfg = load_config(REPO / "params.yaml", {"model": {"name": "mlp", "hidden": 64}})
    assert cfg.model.name == "mlp" and cfg.model.hidden == 64 and not hasattr(cfg.model, "width")
    with pytest.raises(ConfigError, match="hidden"):  # cnn has no `hidden`: not swallowed
        load_config(REPO / "params.yaml", {"model": {"hidden": 64}})
    with pytest.raises(ConfigError, match="widht"):
        load_config(REPO / "params.yaml", {"model": {"widht": 64}})


def test_the_cli_takes_a_recipe_among_the_overrides():
    assert parse_overrides(["recipe=fashion-mlp", "train.epochs=2"]) == {"recipe": "fashion-mlp", "train": {"epochs": 2}}


def test_the_prefect_form_offers_the_recipes_and_each_familys_fields():
    from prefect.utilities.callables import parameter_schema

    from modelyard.recipes import RECIPE_NAMES
    from pipelines.training import training_pipeline

    schema = parameter_schema(training_pipeline.fn).model_dump()
    assert schema["properties"]["recipe"]["anyOf"][0]["enum"] == list(RECIPE_NAMES)
    families = schema["properties"]["model"]["anyOf"][0]["discriminator"]["mapping"]
    assert set(families) == {"cnn", "mlp", "resnet18", "transfer", "bert", "lstm"}
    transfer = schema["definitions"]["TransferConfig"]["properties"]
    assert {"backbone", "mode", "weights", "image_size", "backbone_lr_scale"} <= set(transfer)
    assert "frozen backbone" in transfer["mode"]["description"]
    bert = schema["definitions"]["BertConfig"]["properties"]
    assert {"pretrained", "max_length", "backbone_lr_scale"} <= set(bert)
    assert "all-MiniLM-L6-v2" in bert["pretrained"]["description"]


def test_a_text_model_on_an_image_dataset_is_refused_before_training(tmp_path, test_sample, class_names):
    from modelyard.data.augment import prepare_splits
    from modelyard.data.dataset import write_dataset
    from modelyard.training.distributed import prepare_task

    data = write_dataset(tmp_path / "fashion_mnist", {"train": test_sample, "test": test_sample}, class_names,
                         source="fixture", name="fashion_mnist")
    cfg = load_config(REPO / "params.yaml", {"model": {"name": "lstm"},
                                             "augment": {"prepared_dir": str(tmp_path / "prepared")}})
    assert cfg.model_name == "fashion-mnist-lstm"
    prepared = prepare_splits(data, cfg.augment)
    with pytest.raises(ValueError, match="model.name=lstm is a text model but fashion_mnist holds image data"):
        prepare_task(cfg, data, prepared)


def test_dataset_choices_match_the_registry():
    from typing import get_args

    from modelyard.config import DataConfig
    from modelyard.data.datasets import DATASET_NAMES

    assert set(get_args(DataConfig.model_fields["dataset"].annotation)) == set(DATASET_NAMES)


def test_the_flow_lets_a_recipe_through_the_prefilled_form_and_keeps_what_was_edited():
    from modelyard.config import changed_from_params

    params = str(REPO / "params.yaml")
    prefilled = load_config(params).model_dump(mode="json", by_alias=True)  # what the deployment's form holds
    sections = {k: prefilled[k] for k in ("model", "train", "data", "augment", "registry")}
    assert changed_from_params(sections, params) == {}  # untouched: the recipe decides
    sections["train"] = {**sections["train"], "epochs": 3}
    assert changed_from_params(sections, params) == {"train": {"epochs": 3}}
    cfg = load_config(params, {"recipe": "fashion-mlp"}).with_overrides(changed_from_params(sections, params))
    assert cfg.model.name == "mlp" and cfg.train.epochs == 3 and cfg.train.learning_rate == 0.05
    sections["model"] = {"name": "transfer", "mode": "fine_tuning"}
    assert changed_from_params(sections, params)["model"] == {"name": "transfer", "mode": "fine_tuning"}
