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
