"""Model families trained by the worker code (`engines.run_worker`) in this process, without Ray
(`modelyard.training.local.train_local`): short runs on a small real subset of Fashion-MNIST, each checking
what its family promises. The MLP learns; transfer learning in its three ways: a frozen backbone with cached
features, a frozen backbone under augmentation (no cache: batch-norm must stay in eval mode), fine-tuning at
the backbone's own learning rate; and the initial weights are a function of the seed.

What goes through Ray Train (two workers, Ray Data streaming) is in tests/training/test_distributed.py: Ray
Train's start-up, 20 to 30 s a run on 2 cores, is paid only by the runs that need it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers.config import small_config
from helpers.data import subset
from modelyard.artifact import load_model_dir, save_model_dir
from modelyard.data.prepare import prepare_splits
from modelyard.inference import Predictor
from modelyard.models import family_config
from modelyard.models.transfer import imagenet_state_dict
from modelyard.training.job import prepare_job
from modelyard.training.local import train_local
from modelyard.training.worker import LocalSession

pytestmark = pytest.mark.slow

NO_AUGMENT = {"augment": {"crop_padding": 0, "hflip_prob": 0, "erasing_prob": 0}}


@pytest.fixture(scope="module")
def fm_tiny(fashion_mnist_dir, tmp_path_factory):
    """1,200 real training and 300 test images of Fashion-MNIST."""
    return subset(fashion_mnist_dir, tmp_path_factory.mktemp("fm") / "fashion_mnist", 1200, 300)


def configure(tmp: Path, dataset_dir: Path, **sections):
    sections["train"] = {"num_workers": 1, **sections.get("train", {})}
    cfg = small_config(tmp, data={"dataset": "fashion_mnist"}, **sections)
    return cfg, prepare_splits(dataset_dir, cfg.prepare, tmp / "prepared")


def run_in_process(tmp_path_factory, dataset_dir, **sections):
    """The worker code in this process, the model saved as training saves it; the result carries what the
    family checks read (model_dir, history, final, features_cached, the last checkpoint's state)."""
    tmp = tmp_path_factory.mktemp("run")
    cfg, prepared = configure(tmp, dataset_dir, **sections)
    session = LocalSession()
    model, spec, history, _ = train_local(cfg, family_config(cfg.model), dataset_dir, prepared, session=session)
    model_dir = save_model_dir(model, spec, tmp / "model")
    return cfg, SimpleNamespace(model_dir=model_dir, history=history, final=history[-1], state=session.last_state,
                                features_cached=session.last_state["features_cached"])


def backbone_matches_imagenet(model_dir) -> bool:
    """Every backbone tensor, batch-norm running statistics included, is exactly the ImageNet weights'."""
    model, _ = load_model_dir(model_dir)
    expected = {k: v for k, v in imagenet_state_dict("efficientnet_lite0").items() if not k.startswith("classifier.")}
    got = {k: v for k, v in model.backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    return got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_the_raw_pytorch_mlp_learns(fm_tiny, tmp_path_factory):
    cfg, result = run_in_process(tmp_path_factory, fm_tiny, model={"name": "mlp", "hidden": 128},
                                 train={"epochs": 4, "batch_size": 64, "learning_rate": 0.05, "warmup_epochs": 0.5,
                                        "channels_last": False})
    assert result.final["val/accuracy"] > 0.6 and cfg.task_name == "fashion-mnist-mlp"
    assert result.final["train/loss"] < result.history[0]["train/loss"]
    spec = json.loads((result.model_dir / "model.json").read_text())
    assert spec["args"]["in_features"] == 784 and spec["family"] == "mlp"


def test_feature_extraction_caches_features_and_leaves_the_backbone_bit_identical(fm_tiny, tmp_path_factory):
    cfg, result = run_in_process(tmp_path_factory, fm_tiny,
                                 model={"name": "transfer", "mode": "feature_extraction", "image_size": 64},
                                 prepare=NO_AUGMENT,
                                 train={"epochs": 4, "optimizer": "adamw", "learning_rate": 0.003, "warmup_epochs": 0,
                                        "channels_last": False})
    assert result.features_cached
    assert backbone_matches_imagenet(result.model_dir)
    assert result.final["val/accuracy"] > 0.55  # a linear head over ImageNet features, 1k images, chance 0.10
    assert cfg.task_name == "fashion-mnist-transfer"
    pre = Predictor.from_dir(result.model_dir).preprocessor
    assert pre.input_shape == (64, 64, 3) and pre.mean == (0.5, 0.5, 0.5) and "efficientnet" in pre.normalization


def test_a_frozen_backbone_under_augmentation_still_keeps_its_weights_and_statistics(fm_tiny, tmp_path_factory):
    # Fashion-MNIST's own policy augments: inputs go through the backbone every step (no cache), and its
    # batch-norm layers must stay in eval mode for their running statistics to stay ImageNet's.
    _, result = run_in_process(tmp_path_factory, fm_tiny,
                               model={"name": "transfer", "mode": "feature_extraction", "image_size": 64},
                               train={"epochs": 1, "optimizer": "adamw", "learning_rate": 0.003,
                                      "channels_last": False})
    assert not result.features_cached
    assert backbone_matches_imagenet(result.model_dir)


def test_fine_tuning_moves_the_backbone_at_its_own_learning_rate(fm_tiny, tmp_path_factory):
    _, result = run_in_process(tmp_path_factory, fm_tiny,
                               model={"name": "transfer", "mode": "fine_tuning", "image_size": 64,
                                      "backbone_lr_scale": 0.25},
                               train={"epochs": 1, "optimizer": "adamw", "learning_rate": 0.002, "warmup_epochs": 0,
                                      "schedule": "constant", "grad_clip_norm": 1.0, "grad_accum_steps": 2,
                                      "channels_last": False})
    assert not result.features_cached and not backbone_matches_imagenet(result.model_dir)
    assert result.final["train/lr"] == pytest.approx(0.002)  # the head's group
    rates = {g["name"].removesuffix("/no_decay"): g["lr"] for g in result.state["optimizer"]["param_groups"]}
    assert rates == pytest.approx({"head": 0.002, "backbone": 0.0005})  # a quarter of the head's
    assert math.isfinite(result.final["train/loss"])


def test_the_initial_weights_follow_the_seed(fm_tiny, tmp_path):
    cfg, prepared = configure(tmp_path, fm_tiny, model={"name": "cnn"})
    family = family_config(cfg.model)
    a, b = prepare_job(family, cfg.train, fm_tiny, prepared), prepare_job(family, cfg.train, fm_tiny, prepared)
    other = prepare_job(family, cfg.with_overrides({"train": {"seed": 7}}).train, fm_tiny, prepared)
    assert a.init_state.keys() == other.init_state.keys()
    assert all(torch.equal(a.init_state[k], b.init_state[k]) for k in a.init_state)
    assert not all(torch.equal(a.init_state[k], other.init_state[k]) for k in a.init_state)
