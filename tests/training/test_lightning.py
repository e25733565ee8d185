"""The lightning engine (`train.engine: lightning`): the same worker with `lightning.Trainer` stepping it.

In this process (`train_local`): with the same seed and recipe it steps exactly what the torch engine steps
(equal histories), a user's own LightningModule is used and a broken one is refused by name, and only
`lightning.pytorch` is imported. Through Ray Train on two CPU workers and served: tests/pipelines/
test_training_lightning.py.
"""

from __future__ import annotations

import sys

import pytest

from helpers.data import subset
from modelyard.config import TrainConfig

pytestmark = pytest.mark.slow

MLP = {"name": "mlp", "hidden": 128}
TRAIN = {"num_workers": 1, "epochs": 3, "batch_size": 64, "learning_rate": 0.05, "warmup_epochs": 0.5,
         "channels_last": False}


@pytest.fixture(scope="module")
def fm_tiny(fashion_mnist_dir, tmp_path_factory):
    """1,200 real training and 300 test images of Fashion-MNIST."""
    return subset(fashion_mnist_dir, tmp_path_factory.mktemp("fm") / "fashion_mnist", 1200, 300)


def history(tmp_path_factory, dataset_dir, **train):
    from helpers.config import small_config
    from modelyard.data.prepare import prepare_splits
    from modelyard.models import family_config
    from modelyard.training.local import train_local

    tmp = tmp_path_factory.mktemp("run")
    cfg = small_config(tmp, data={"dataset": "fashion_mnist"}, model=MLP, train={**TRAIN, **train})
    prepared = prepare_splits(dataset_dir, cfg.prepare, tmp / "prepared")
    _, _, epochs, _ = train_local(cfg, family_config(cfg.model), dataset_dir, prepared)
    return [{k: v for k, v in h.items() if not k.endswith(("_time_s", "samples_per_s"))} for h in epochs]


def same(ours: list[dict[str, float]], theirs: list[dict[str, float]]) -> bool:
    return len(ours) == len(theirs) and all(a == pytest.approx(b, rel=1e-5, abs=1e-6) for a, b in zip(ours, theirs))


@pytest.fixture(scope="module")
def torch_history(fm_tiny, tmp_path_factory):
    return history(tmp_path_factory, fm_tiny, engine="torch")


def test_lightning_steps_exactly_what_the_torch_engine_steps(fm_tiny, tmp_path_factory, torch_history):
    lightning = history(tmp_path_factory, fm_tiny, engine="lightning")
    assert len(lightning) == 3 and lightning[-1]["val/accuracy"] > 0.6
    assert same(lightning, torch_history)  # the same draws, steps, schedule and precision
    assert "lightning.pytorch" in sys.modules and "pytorch_lightning" not in sys.modules


def test_a_users_lightning_module_is_the_one_trained(fm_tiny, tmp_path_factory):
    mine = history(tmp_path_factory, fm_tiny, engine="lightning",
                   lightning_module="helpers.lightning_modules:WithoutSmoothing", label_smoothing=0.1)
    plain = history(tmp_path_factory, fm_tiny, engine="lightning", label_smoothing=0.0)
    assert same(mine, plain)  # its own loss, not the recipe's smoothing


@pytest.mark.parametrize("path, message", [
    ("helpers.lightning_modules:FirstThreeClasses", r"logits of shape \(64, 3\); the family contract is"),
    ("helpers.lightning_modules:NotAFamilyModule", "is not a subclass of modelyard.training.lightning.FamilyModule"),
    ("helpers.no_such_module:Module", "cannot be imported"),
])
def test_a_module_breaking_the_contract_is_refused_by_name(fm_tiny, tmp_path_factory, path, message):
    with pytest.raises(ValueError, match=message):
        history(tmp_path_factory, fm_tiny, engine="lightning", lightning_module=path, epochs=1)


def test_the_config_refuses_a_module_without_the_engine_or_a_path():
    with pytest.raises(ValueError, match="train.engine is torch; set train.engine=lightning"):
        TrainConfig(lightning_module="helpers.lightning_modules:WithoutSmoothing")
    with pytest.raises(ValueError, match="is not a dotted path"):
        TrainConfig(engine="lightning", lightning_module="not a path")
