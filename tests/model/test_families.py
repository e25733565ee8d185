"""Every model family trains through the pipeline's worker code on real data: the MLP, ResNet-18 on colour
images, and transfer learning in both modes (frozen backbone with cached features, frozen backbone under
augmentation, fine-tuning). Short runs on small real subsets; what each family promises is checked.

The two-worker runs (ResNet-18, the Ray Data streaming path) go through Ray Train. The single-worker family
checks run the same worker code (`distributed.run_worker`) in this process (`modelyard.training.local`):
what they check is the family, and Ray Train's start-up, 20 to 30 s a run on 2 cores, is paid by the runs
here that need it, by tests/model/test_training.py and by every flow test."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import photo_tiles, small_config

from modelyard.data.augment import prepare_splits
from modelyard.data.dataset import ImageSplit, load_split, read_metadata, write_dataset
from modelyard.data.datasets import get_dataset
from modelyard.inference import Predictor
from modelyard.models.artifact import load_model_dir
from modelyard.models.transfer import imagenet_state_dict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module's runs (train() then reuses it instead of starting its own)."""
    import ray

    from modelyard.runtime import connect_ray

    connect_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def fm_tiny(fashion_mnist_dir, tmp_path_factory):
    """1,200 real training and 300 test images of Fashion-MNIST."""
    meta = read_metadata(fashion_mnist_dir)
    train, test = load_split(fashion_mnist_dir, "train"), load_split(fashion_mnist_dir, "test")
    out = tmp_path_factory.mktemp("fm") / "fashion_mnist"
    return write_dataset(out, {"train": ImageSplit(train.images[:1200], train.labels[:1200]),
                               "test": ImageSplit(test.images[:300], test.labels[:300])},
                         meta["classes"], source="subset", name="fashion_mnist")


@pytest.fixture(scope="module")
def cifar_tiny(tmp_path_factory):
    """300 real 32x32 colour photo tiles in the cifar10 layout (labels arbitrary but balanced)."""
    tiles, labels = photo_tiles(300), np.arange(300) % 10
    out = tmp_path_factory.mktemp("cifar") / "cifar10"
    return write_dataset(out, {"train": ImageSplit(tiles[:200], labels[:200]), "test": ImageSplit(tiles[200:], labels[200:])},
                         list(get_dataset("cifar10").classes), source="photo tiles", name="cifar10")


def configure(tmp_path_factory, dataset_dir, sections):
    tmp = tmp_path_factory.mktemp("run")
    sections["train"] = {"num_workers": 1, **sections.get("train", {})}
    sections["data"] = {"dataset": read_metadata(dataset_dir)["name"], **sections.get("data", {})}
    cfg = small_config(tmp, Path(dataset_dir).parent, **sections)
    return cfg, prepare_splits(dataset_dir, cfg.augment)


def run(tmp_path_factory, dataset_dir, **sections):
    """Through Ray Train (`distributed.train`)."""
    from modelyard.training.distributed import train

    cfg, prepared = configure(tmp_path_factory, dataset_dir, sections)
    return cfg, train(cfg, dataset_dir, prepared)


def run_in_process(tmp_path_factory, dataset_dir, **sections):
    """The same worker code in this process, the model saved as `train` saves it; the result carries what the
    family checks read (model_dir, history, final, features_cached)."""
    from modelyard.models.artifact import save_model_dir
    from modelyard.training.distributed import LocalSession
    from modelyard.training.local import train_local

    cfg, prepared = configure(tmp_path_factory, dataset_dir, sections)
    session = LocalSession()
    model, spec, history, _ = train_local(cfg, dataset_dir, prepared, session=session)
    model_dir = save_model_dir(model, spec, Path(cfg.train.output_dir) / "model")
    return cfg, SimpleNamespace(model_dir=str(model_dir), history=history, final=history[-1],
                                features_cached=session.last_state["features_cached"])


def backbone_matches_imagenet(model_dir) -> bool:
    model, _ = load_model_dir(model_dir)
    expected = {k: v for k, v in imagenet_state_dict("efficientnet_lite0").items() if not k.startswith("classifier.")}
    got = {k: v for k, v in model.backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    return got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_the_raw_pytorch_mlp_learns(fm_tiny, tmp_path_factory):
    cfg, result = run_in_process(tmp_path_factory, fm_tiny, model={"name": "mlp", "hidden": 128},
                                 train={"epochs": 4, "batch_size": 64, "learning_rate": 0.05, "warmup_epochs": 0.5,
                                        "channels_last": False})
    assert result.final["val/accuracy"] > 0.6 and cfg.model_name == "fashion-mnist-mlp"
    spec = json.loads((Path(result.model_dir) / "model.json").read_text())
    assert spec["args"]["in_features"] == 784 and spec["family"] == "mlp"


def test_resnet18_trains_on_colour_images_with_per_channel_statistics(ray_session, cifar_tiny, tmp_path_factory):
    cfg, result = run(tmp_path_factory, cifar_tiny, model={"name": "resnet18"},
                      train={"epochs": 1, "batch_size": 40, "num_workers": 2})
    pre = Predictor.from_dir(result.model_dir).preprocessor
    assert pre.source_shape == pre.input_shape == (32, 32, 3) and len(set(pre.mean)) == 3
    assert result.num_workers == 2 and len(result.history) == 1 and cfg.model_name == "cifar10-resnet18"
    test = load_split(cifar_tiny, "test")
    assert Predictor.from_dir(result.model_dir).predict_proba(test.images).shape == (100, 10)
    assert np.isfinite(result.final["train/loss"])


def test_feature_extraction_caches_features_and_leaves_the_backbone_bit_identical(fm_tiny, tmp_path_factory):
    cfg, result = run_in_process(tmp_path_factory, fm_tiny,
                                 model={"name": "transfer", "mode": "feature_extraction", "image_size": 64},
                                 augment={"crop_padding": 0, "hflip_prob": 0, "erasing_prob": 0},
                                 train={"epochs": 4, "optimizer": "adamw", "learning_rate": 0.003, "warmup_epochs": 0,
                                        "channels_last": False})
    assert result.features_cached
    assert backbone_matches_imagenet(result.model_dir)
    assert result.final["val/accuracy"] > 0.55  # a linear head over ImageNet features, 1k images, chance 0.10
    assert cfg.model_name == "fashion-mnist-efficientnet-lite0"
    pre = Predictor.from_dir(result.model_dir).preprocessor
    assert pre.input_shape == (64, 64, 3) and pre.mean == (0.5, 0.5, 0.5) and "efficientnet" in pre.normalization


def test_a_frozen_backbone_under_augmentation_still_keeps_its_weights_and_statistics(fm_tiny, tmp_path_factory):
    # Augmented inputs go through the backbone every step (no cache): batch-norm must stay in eval mode.
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
    assert result.final["train/lr"] == pytest.approx(0.002)  # the head's group; the backbone's is a quarter
    assert np.isfinite(result.final["train/loss"])


def test_the_streaming_path_feeds_each_worker_its_shard_through_ray_data(ray_session, fm_tiny, tmp_path_factory):
    # Forced here; `auto` streams splits larger than data.resident_max_mb.
    cfg, result = run(tmp_path_factory, fm_tiny, data={"loading": "streaming"},
                      train={"epochs": 3, "batch_size": 64, "num_workers": 2, "warmup_epochs": 0.5})
    assert result.num_workers == 2 and len(result.history) == 3
    # Each worker streamed an equal shard: the epoch's samples are the training rows, less the dropped tails.
    seen = result.history[-1]["train/samples_per_s"] * result.history[-1]["train/epoch_time_s"]
    train_rows = 1200 - round(1200 * cfg.augment.val_fraction)
    assert train_rows - 2 * 32 <= round(seen) <= train_rows
    assert result.final["val/accuracy"] > 0.6


def test_auto_loading_keeps_small_splits_resident_and_streams_large_ones():
    from types import SimpleNamespace

    from modelyard.config import PipelineConfig
    from modelyard.training.distributed import choose_loading

    small, large = np.zeros((1000, 28, 28), np.uint8), SimpleNamespace(nbytes=3 * 1024**3)  # 3 GiB of images
    cfg = PipelineConfig()
    assert choose_loading(cfg, small) == "resident" and choose_loading(cfg, large) == "streaming"
    assert choose_loading(PipelineConfig(data={"loading": "streaming"}), small) == "streaming"


def test_the_initial_weights_follow_the_seed(fm_tiny, tmp_path):
    from conftest import small_config

    from modelyard.training.distributed import prepare_task

    cfg = small_config(tmp_path, fm_tiny.parent)
    prepared = prepare_splits(fm_tiny, cfg.augment)
    a, b = prepare_task(cfg, fm_tiny, prepared), prepare_task(cfg, fm_tiny, prepared)
    other = prepare_task(cfg.with_overrides({"train": {"seed": 7}}), fm_tiny, prepared)
    assert all(torch.equal(a.init_state[k], b.init_state[k]) for k in a.init_state)
    assert not all(torch.equal(a.init_state[k], other.init_state[k]) for k in a.init_state)
