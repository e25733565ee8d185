"""modelyard.forms and the training flow's parameters: the Prefect form offers the recipes, the datasets and
every family's own fields; prefilled with params.yaml, it lets a picked recipe through and keeps only what a
person edited."""

from __future__ import annotations

import os

import pytest
from prefect.utilities.callables import parameter_schema

from helpers.paths import REPO
from modelyard.config import TrainConfig, load_config
from modelyard.forms import FORM_SECTIONS, NO_RECIPE, config_from_form, form_defaults
from modelyard.recipes import RECIPE_NAMES
from pipelines.training import training_pipeline

PARAMS = REPO / "params.yaml"


@pytest.fixture(scope="module")
def schema() -> dict:
    return parameter_schema(training_pipeline.fn).model_dump()


def test_the_prefect_form_offers_the_recipes_and_each_familys_fields(schema):
    from modelyard.models import family_names

    recipe = schema["properties"]["recipe"]
    assert recipe["enum"] == [NO_RECIPE, *RECIPE_NAMES] and recipe["default"] == NO_RECIPE
    # One choice per family, each titled by its name (the toggle's label), and None (params.yaml's family):
    # a plain union, which the UI draws as toggles (a discriminated one's oneOf is drawn as a raw JSON editor).
    choices = schema["properties"]["model"]["anyOf"]
    assert "oneOf" not in str(schema["properties"]["model"]) and choices[-1] == {"type": "null"}
    refs = [c["$ref"].rsplit("/", 1)[-1] for c in choices[:-1]]
    families = [schema["definitions"][ref]["title"] for ref in refs]
    assert families == list(family_names())  # every family of the registry, in its order, none invented
    assert {"bert", "cnn", "lstm", "mlp", "resnet18", "transfer"} <= set(families)
    for ref, family in zip(refs, families):  # each choice's `name` is its own family, and nothing else
        assert schema["definitions"][ref]["properties"]["name"]["const"] == family
    transfer = schema["definitions"]["TransferConfig"]["properties"]
    assert {"backbone", "mode", "weights", "image_size", "backbone_lr_scale"} <= set(transfer)
    assert "frozen backbone" in transfer["mode"]["description"]
    bert = schema["definitions"]["BertConfig"]["properties"]
    assert {"pretrained", "max_length", "backbone_lr_scale"} <= set(bert)
    assert "all-MiniLM-L6-v2" in bert["pretrained"]["description"]
    lstm = schema["definitions"]["LSTMConfig"]["properties"]
    assert {"tokenizer", "max_length", "cell", "embedding_dim", "hidden", "layers"} <= set(lstm)


def test_the_form_picks_the_dataset_from_the_registry_and_shows_no_paths(schema):
    from modelyard.data.datasets import dataset_names

    assert schema["definitions"]["DataConfig"]["properties"]["dataset"]["enum"] == list(dataset_names())
    sections = set(schema["properties"]) - {"recipe", "deploy", "cause"}  # cause: the retraining trigger's
    assert sections == set(FORM_SECTIONS)  # no paths (a flow run's are its run directory's), no serve


def test_the_form_is_prefilled_with_params_yaml_and_the_familys_every_field():
    from modelyard.models.cnn import CNNConfig

    prefilled = form_defaults(PARAMS)
    assert tuple(prefilled) == FORM_SECTIONS
    assert prefilled["model"] == CNNConfig().model_dump(mode="json")
    assert prefilled["model"] == {"name": "cnn", "width": 32, "dropout": 0.1}
    assert prefilled["train"] == TrainConfig().model_dump(mode="json")
    assert prefilled["data"]["dataset"] == "fashion_mnist"
    # The prefilled form passes the flow's own parameter validation (what a run from the UI goes through).
    params = training_pipeline.validate_parameters({"recipe": NO_RECIPE, **prefilled})
    assert type(params["model"]).__name__ == "CNNConfig" and params["train"] == TrainConfig()


def test_the_flow_lets_a_recipe_through_the_prefilled_form_and_keeps_what_was_edited():
    prefilled = form_defaults(PARAMS)
    untouched = config_from_form(PARAMS, "fashion-mlp", prefilled)  # untouched: the recipe decides
    assert untouched == load_config(PARAMS, {"recipe": "fashion-mlp"})
    assert untouched.model.name == "mlp" and untouched.train.epochs == 24
    edited = prefilled | {"train": {**prefilled["train"], "epochs": 3}}
    cfg = config_from_form(PARAMS, "fashion-mlp", edited)
    assert cfg.model.name == "mlp" and cfg.model.fields["hidden"] == 512  # the recipe's family and fields
    assert cfg.train.epochs == 3 and cfg.train.learning_rate == 0.0641  # the edit, and the recipe's rate
    another = edited | {"model": {"name": "transfer", "mode": "fine_tuning"}}
    cfg = config_from_form(PARAMS, "fashion-mlp", another)  # a family picked in the form wins as a whole
    assert cfg.model.name == "transfer" and cfg.model.fields == {"mode": "fine_tuning"}
    assert cfg.recipe == "fashion-mlp" and cfg.train.epochs == 3


def test_the_sections_prefect_hands_the_flow_go_through_the_same_way():
    """Prefect gives the flow typed sections (a family config, TrainConfig, ...), not dicts."""
    prefilled = form_defaults(PARAMS)
    params = training_pipeline.validate_parameters({"recipe": "rt-lstm", **prefilled})
    sections = {name: params[name] for name in FORM_SECTIONS}
    cfg = config_from_form(PARAMS, params["recipe"], sections)
    assert (cfg.data.dataset, cfg.model.name, cfg.train.epochs) == ("rt_polarity", "lstm", 3)
    sections["train"] = sections["train"].model_copy(update={"epochs": 2})
    assert config_from_form(PARAMS, "rt-lstm", sections).train.epochs == 2


def test_no_recipe_is_the_parameter_file_as_it_is():
    prefilled = form_defaults(PARAMS)
    assert config_from_form(PARAMS, NO_RECIPE, prefilled) == load_config(PARAMS)
    assert config_from_form(PARAMS, None, prefilled) == load_config(PARAMS)
    narrow = prefilled | {"model": {"name": "cnn", "width": 8, "dropout": 0.1}}
    width = config_from_form(PARAMS, NO_RECIPE, narrow)
    assert width.model.fields == {"width": 8}


def test_a_field_the_family_lacks_is_refused_where_the_run_enters():
    prefilled = form_defaults(PARAMS)
    with pytest.raises(ValueError, match=r"(?s)model \(cnn\).*\nhidden\n"):
        config_from_form(PARAMS, NO_RECIPE, prefilled | {"model": {"name": "cnn", "hidden": 64}})
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match="recipe"):  # the flow's parameters refuse an unknown recipe
        training_pipeline.validate_parameters({"recipe": "fashion-gan"})


# A flow run's parameters come from whoever reaches the Prefect API; the run executes as the runner. The
# audit's attacks, each refused where the run enters (before any stage runs).

def test_a_flow_run_cannot_point_the_dataset_reader_at_a_folder_of_its_choosing(tmp_path):
    from prefect.exceptions import ParameterTypeError

    attack = {"dataset": "cifar10", "raw_dir": str(tmp_path), "local_dir": str(tmp_path)}
    with pytest.raises(ParameterTypeError, match="raw_dir"):
        training_pipeline.validate_parameters({"data": attack})
    with pytest.raises(ValueError, match="raw_dir"):
        config_from_form(PARAMS, NO_RECIPE, form_defaults(PARAMS) | {"data": attack})
    from prefect.exceptions import SignatureMismatchError

    with pytest.raises(SignatureMismatchError):  # nor any path section, nor the parameter file
        training_pipeline.validate_parameters({"paths": {"raw_dir": str(tmp_path)}, "params_path": "/etc/x.yaml"})


@pytest.mark.parametrize("family, field", [("transfer", "weights"), ("bert", "pretrained"), ("lstm", "tokenizer")])
def test_a_flow_run_cannot_name_a_file_outside_the_data_and_artifact_roots(family, field, tmp_path):
    from modelyard.forms import FormError

    outside = tmp_path / "weights.pt"
    outside.write_bytes(b"\x80\x04K\x01.")  # a file that exists: the family's own check lets it through
    with pytest.raises(FormError, match=rf"model\.{field}=.*outside the runner's data and artifact roots"):
        config_from_form(PARAMS, NO_RECIPE, form_defaults(PARAMS) | {"model": {"name": family, field: str(outside)}})
    climb = "data/" + os.path.relpath(outside, REPO / "data")  # data/../../tmp/...: a file that exists
    with pytest.raises(FormError, match="outside"):  # nor by climbing out of a root
        config_from_form(PARAMS, NO_RECIPE,
                         form_defaults(PARAMS) | {"model": {"name": family, field: climb}})


def test_a_flow_run_cannot_train_on_a_feedback_set_outside_the_roots(tmp_path):
    from modelyard.forms import FormError

    form = form_defaults(PARAMS)
    with pytest.raises(FormError, match=r"data\.feedback=.*outside the runner's data and artifact roots"):
        config_from_form(PARAMS, NO_RECIPE, form | {"data": form["data"] | {"feedback": str(tmp_path)}})
    inside = config_from_form(PARAMS, NO_RECIPE, form | {"data": form["data"] | {"feedback": "data/feedback/x"}})
    assert inside.data.feedback == "data/feedback/x"


def test_a_file_inside_the_roots_and_the_named_choices_are_accepted(tmp_path):
    inside = REPO / "artifacts" / "weights-for-a-form-test.pt"
    inside.parent.mkdir(exist_ok=True)  # a fresh clone has no artifacts/ yet
    inside.write_bytes(b"")
    try:
        cfg = config_from_form(PARAMS, NO_RECIPE, form_defaults(PARAMS) | {"model": {"name": "transfer",
                                                                                     "weights": str(inside)}})
        assert cfg.model.fields["weights"] == str(inside)
    finally:
        inside.unlink()
    cfg = config_from_form(PARAMS, NO_RECIPE, form_defaults(PARAMS) | {"model": {"name": "bert",
                                                                                 "pretrained": "all-MiniLM-L6-v2"}})
    assert cfg.model.fields["pretrained"] == "all-MiniLM-L6-v2"


def test_a_flow_run_cannot_move_the_registry_elsewhere(tmp_path):
    from modelyard.forms import FormError

    prefilled = form_defaults(PARAMS)
    for uri in (f"sqlite:///{tmp_path}/other.db", "http://203.0.113.7:5000"):
        with pytest.raises(FormError, match="registry.tracking_uri is the runner's setting"):
            config_from_form(PARAMS, NO_RECIPE, prefilled | {"registry": {**prefilled["registry"], "tracking_uri": uri}})
