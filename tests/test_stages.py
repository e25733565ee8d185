"""The train stage's refusals: before anything is trained (or Ray started) it checks that the data are the
data the last validation passed and that the prepared split was cut from them; a training refused for its
configuration leaves the previous output as it was."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers.config import small_config
from modelyard import stages
from modelyard.data.dataset import load_split
from modelyard.data.prepare import StaleSplitError
from modelyard.data.validate import DataChangedError
from modelyard.paths import TaskPaths


def test_a_split_cut_from_other_data_is_refused_with_the_stage_to_rerun(fashion_mnist_dir, tmp_path):
    """`fetch` with a new train_limit after `prepare`: the old split's indices no longer fit the data."""
    import ray

    cfg = small_config(tmp_path, data={"dataset": "fashion_mnist", "train_limit": 3000, "test_limit": 500})
    stages.fetch(cfg)  # from the tests' shared raw download
    stages.prepare(cfg)
    smaller = cfg.with_overrides({"data": {"train_limit": 1000}})
    stages.fetch(smaller)
    assert len(load_split(TaskPaths.of(smaller).dataset_dir, "train")) == 1000
    with pytest.raises(StaleSplitError, match=r"re-run `modelyard prepare`") as exc:
        stages.train(smaller, track=False)
    assert "was cut from dataset" in str(exc.value)
    assert not ray.is_initialized()


def test_data_changed_on_disk_after_validation_are_refused_by_training(small_dataset_dir, tmp_path):
    """One label of the validated train split is edited in place (dataset.json left as it was, so only the
    data themselves tell): training refuses, naming the split and what to re-run; a failed validation too."""
    import ray

    cfg = small_config(tmp_path, data={"dataset": "fashion_mnist"})
    paths = TaskPaths.of(cfg)
    shutil.copytree(small_dataset_dir, paths.dataset_dir)
    stages.validate(cfg)
    stages.prepare(cfg)
    train = load_split(paths.dataset_dir, "train")
    labels = train.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    np.savez_compressed(paths.dataset_dir / "train.npz", images=train.images, labels=labels)
    with pytest.raises(DataChangedError, match=r"the train split in .* changed after validation .*validate it again"):
        stages.train(cfg, track=False)
    assert not ray.is_initialized()

    report = paths.validation_dir / "report.json"
    doc = json.loads(report.read_text())
    report.write_text(json.dumps({**doc, "success": False, "failed": 1}))
    with pytest.raises(DataChangedError, match="the last validation of fashion_mnist failed"):
        stages.train(cfg, track=False)
    assert not ray.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only where there is no CUDA device")
def test_a_refused_training_starts_nothing_and_leaves_the_previous_output_intact(small_dataset_dir, tmp_path):
    import ray

    cfg = small_config(tmp_path, data={"dataset": "fashion_mnist"}, train={"mixed_precision": "fp16"})
    paths = TaskPaths.of(cfg)
    paths.dataset_dir.parent.mkdir(parents=True)
    paths.dataset_dir.symlink_to(small_dataset_dir)
    stages.prepare(cfg)
    previous = paths.train_dir
    (previous / "model").mkdir(parents=True)
    (previous / "model" / "model.pt").write_bytes(b"weights of the last good run")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        stages.train(cfg, track=False)
    assert not ray.is_initialized()  # the configuration was checked before Ray was started
    assert (previous / "model" / "model.pt").read_bytes() == b"weights of the last good run"
    assert not any(".partial" in p.name for p in previous.parent.iterdir())
