"""Short real training runs through Ray Train with two workers (`distributed.train`): the loss falls, accuracy
clears a bound on the untouched test split, and the run leaves per-epoch checkpoints, TensorBoard events and a
model a Predictor can load; ResNet-18 learns real labelled images stored in colour; the Ray Data streaming path
feeds each worker its shard; and `auto` loading picks resident or streaming by size.

Each run starts its own local Ray and `train` shuts it down again (checked after every run)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from helpers.config import small_config
from helpers.data import subset
from modelyard.config import DataConfig
from modelyard.data.dataset import load_split, read_metadata, write_dataset
from modelyard.data.prepare import load_prepared, prepare_splits
from modelyard.inference import Predictor
from modelyard.modalities.image import ImageSplit
from modelyard.models import family_config
from modelyard.paths import TaskPaths
from modelyard.training.job import choose_loading, prepare_job

pytestmark = pytest.mark.slow


def run(tmp: Path, dataset_dir: Path, **sections):
    """`distributed.train` on the dataset at `dataset_dir`, as the train stage calls it; the result and where
    it wrote its output."""
    import ray

    from modelyard.training.distributed import train

    sections["data"] = {"dataset": read_metadata(dataset_dir)["name"], **sections.get("data", {})}
    cfg = small_config(tmp, **sections)
    prepared = prepare_splits(dataset_dir, cfg.prepare, tmp / "prepared")
    out = TaskPaths.of(cfg).train_dir
    result = train(cfg, family_config(cfg.model), dataset_dir, prepared, out)
    assert not ray.is_initialized()  # train() shuts down the Ray it started
    return SimpleNamespace(cfg=cfg, prepared=prepared, out=out, result=result)


def accuracy_on(predictor: Predictor, split) -> float:
    return float((predictor.predict_proba(split.inputs).argmax(1) == split.labels).mean())


# ---- the default CNN on 4,000 real Fashion-MNIST images -----------------------------------------------

@pytest.fixture(scope="module")
def trained(small_dataset_dir, tmp_path_factory):
    return run(tmp_path_factory.mktemp("train"), small_dataset_dir, train={"epochs": 3, "num_workers": 2})


def test_loss_falls_and_validation_accuracy_clears_a_bound(trained):
    losses = [h["train/loss"] for h in trained.result.history]
    assert len(losses) == 3 and losses[-1] < losses[0] * 0.8
    assert trained.result.final["val/accuracy"] > 0.70  # 3.6k real training images, 3 epochs; chance is 0.10


def test_model_generalises_to_the_untouched_test_split(trained, small_dataset_dir):
    predictor = Predictor.from_dir(trained.result.model_dir)
    test = load_split(small_dataset_dir, "test")
    accuracy = accuracy_on(predictor, test)
    assert accuracy > 0.70
    # Behaviour: the classes any shoe-vs-clothes model separates (trousers, bags, sneakers) come out best.
    easy = np.isin(test.labels, [1, 7, 8])
    assert accuracy_on(predictor, test.take(np.flatnonzero(easy))) > accuracy


def test_run_leaves_checkpoints_tensorboard_and_a_self_describing_model(trained):
    out, result = trained.out, trained.result
    assert Path(result.model_dir) == out / "model"
    spec = json.loads((out / "model" / "model.json").read_text())
    assert spec["family"] == "cnn" and spec["labels"][6] == "Shirt"
    assert 0.2 < spec["preprocessing"]["mean"][0] < 0.4 and spec["preprocessing"]["input_shape"] == [28, 28, 1]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "history.json").read_text()) == result.history
    checkpoints = [p for p in (out.parent / "ray").glob("train-*/checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 2  # one per epoch, the newest two kept
    saved = json.loads((out / "train.json").read_text())
    assert saved["epochs"] == 3 and saved["num_workers"] == 2 and saved["device"] == "cpu"
    assert saved["cpus_per_worker"] == 1  # two workers share this 2-core machine's cores
    assert 0 < saved["startup_s"] < saved["wall_time_s"] and saved["resumed_after_epochs"] == []
    # `auto` precision was resolved on the worker's CPU and recorded: bf16 only where it is native.
    from modelyard.training.precision import cpu_bf16_support

    assert saved["precision"] == ("bf16" if cpu_bf16_support() else "none") and saved["precision_reason"]
    assert not any(".partial" in p.name for p in out.parent.iterdir())  # the staging copy was swapped in


def test_training_is_reproducible_in_its_data_order(small_dataset_dir, tmp_path):
    """Same seed, same split and statistics: they do not depend on the run."""
    cfg = small_config(tmp_path, data={"dataset": "fashion_mnist"})
    a = load_prepared(prepare_splits(small_dataset_dir, cfg.prepare, tmp_path / "a"))
    b = load_prepared(prepare_splits(small_dataset_dir, cfg.prepare, tmp_path / "b"))
    assert np.array_equal(a.train_indices, b.train_indices) and a.statistics == b.statistics
    other = load_prepared(prepare_splits(small_dataset_dir, cfg.prepare.model_copy(update={"seed": 7}),
                                         tmp_path / "c"))
    assert not np.array_equal(a.train_indices, other.train_indices)  # the seed decides it


# ---- ResNet-18 on images stored in colour -----------------------------------------------------------

def fashion_in_colour(fashion_mnist_dir: Path, out: Path, train: int, test: int) -> Path:
    """Real Fashion-MNIST images with their real labels, stored as 32x32 RGB (padded with the images' own
    black background, the gray value in each channel) in the layout of the `cifar10` dataset, the registry's
    colour dataset: CIFAR-10 itself ships in no registry this machine reaches, and the photographs
    helpers.data has in its layout carry no real labels."""
    def colour(images: np.ndarray) -> np.ndarray:
        padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
        return np.ascontiguousarray(np.repeat(padded[..., None], 3, axis=-1))

    splits = {name: load_split(fashion_mnist_dir, name).take(slice(0, rows))
              for name, rows in (("train", train), ("test", test))}
    return write_dataset(out, {k: ImageSplit(colour(s.images), s.labels) for k, s in splits.items()},
                         read_metadata(fashion_mnist_dir)["classes"], source="Fashion-MNIST as 32x32 RGB",
                         name="cifar10", modality="image")


def test_resnet18_learns_real_labelled_colour_images(fashion_mnist_dir, tmp_path):
    dataset_dir = fashion_in_colour(fashion_mnist_dir, tmp_path / "data" / "cifar10", train=1200, test=300)
    trained = run(tmp_path, dataset_dir, model={"name": "resnet18"},
                  train={"epochs": 3, "batch_size": 32, "learning_rate": 0.05, "warmup_epochs": 0.3, "num_workers": 2})
    result = trained.result
    assert result.num_workers == 2 and len(result.history) == 3 and trained.cfg.task_name == "cifar10-resnet18"
    predictor = Predictor.from_dir(result.model_dir)
    # A colour model: 32x32x3 in, per-channel statistics fitted on the training rows, three input channels.
    pre = predictor.preprocessor
    assert pre.source_shape == pre.input_shape == (32, 32, 3)
    assert list(pre.mean) == load_prepared(trained.prepared).statistics["mean"] and len(pre.mean) == 3
    assert predictor.spec.args["in_channels"] == 3 and predictor.spec.labels[1] == "Trouser"
    # It learnt: the loss fell and it names the classes of images it never saw far above chance (0.10).
    losses = [h["train/loss"] for h in result.history]
    assert losses[-1] < losses[0] * 0.8, losses
    assert result.final["val/accuracy"] > 0.5
    assert accuracy_on(predictor, load_split(dataset_dir, "test")) > 0.5


# ---- data loading -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fm_tiny(fashion_mnist_dir, tmp_path_factory):
    """1,200 real training and 300 test images of Fashion-MNIST."""
    return subset(fashion_mnist_dir, tmp_path_factory.mktemp("fm") / "fashion_mnist", 1200, 300)


def test_the_streaming_path_feeds_each_worker_its_shard_through_ray_data(fm_tiny, tmp_path):
    # Forced here; `auto` streams splits larger than data.resident_max_mb.
    trained = run(tmp_path, fm_tiny, data={"loading": "streaming"},
                  train={"epochs": 3, "batch_size": 64, "num_workers": 2, "warmup_epochs": 0.5})
    result = trained.result
    assert result.num_workers == 2 and len(result.history) == 3
    # Each worker streamed an equal shard: the epoch's samples are the training rows, less the dropped tails.
    last = result.history[-1]
    seen = last["train/samples_per_s"] * last["train/epoch_time_s"]
    train_rows = len(load_prepared(trained.prepared).train_indices)
    assert train_rows - 2 * 32 <= round(seen) <= train_rows
    assert result.final["val/accuracy"] > 0.6


def test_auto_loading_keeps_small_splits_resident_and_streams_large_ones(fm_tiny, tmp_path):
    cfg = small_config(tmp_path, data={"dataset": "fashion_mnist"})
    prepared = prepare_splits(fm_tiny, cfg.prepare, tmp_path / "prepared")
    small = prepare_job(family_config(cfg.model), cfg.train, fm_tiny, prepared)  # 1,200 images: under 1 MB
    large = SimpleNamespace(nbytes=3 * 1024**3)  # 3 GiB of images
    assert choose_loading(cfg.data, small) == "resident" and choose_loading(cfg.data, large) == "streaming"
    assert choose_loading(DataConfig(dataset="fashion_mnist", loading="streaming"), small) == "streaming"
    assert choose_loading(DataConfig(dataset="fashion_mnist", resident_max_mb=1), large) == "streaming"
    assert choose_loading(DataConfig(dataset="fashion_mnist", loading="resident"), large) == "resident"
