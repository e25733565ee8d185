"""What a training run hands its workers, prepared once by the driver: the model's spec with its fitted
preprocessor, the augmentation policy, the training split as arrays, and the initial weights (pretrained
ones loaded here, so no worker reads a file only the driver has)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modelyard.artifact import ModelSpec
from modelyard.config import DataConfig, TrainConfig
from modelyard.data.dataset import load_split, modality_of, read_metadata
from modelyard.data.datasets import get_dataset
from modelyard.data.prepare import load_prepared
from modelyard.modalities import Policy
from modelyard.models import FamilyConfig

log = logging.getLogger(__name__)


@dataclass
class TrainingJob:
    family: FamilyConfig
    spec: ModelSpec
    policy: Policy
    arrays: dict[str, np.ndarray]  # one row per training input, `labels` among them (the modality's columns)
    train_rows: np.ndarray  # row numbers of the train part of the prepared split
    val_rows: np.ndarray
    init_state: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def prepare_job(family: FamilyConfig, train: TrainConfig, dataset_dir: str | os.PathLike[str],
                prepared_dir: str | os.PathLike[str], augment: Mapping[str, Any] | None = None) -> TrainingJob:
    """The spec (family, builder arguments, labels, fitted preprocessing), the data and the seeded initial
    weights of training `family` on the prepared split of the dataset in `dataset_dir`. `augment` (a search
    trial's `prepare.augment`) replaces the prepared augmentation policy; the split and statistics stay."""
    meta = read_metadata(dataset_dir)
    modality = modality_of(meta)
    if modality.name not in family.modalities:
        raise ValueError(f"model.name={family.name} takes {', '.join(family.modalities)} input, but {meta['name']} "
                         f"holds {modality.name} data; pick a family that takes {modality.name} "
                         "(`modelyard families`) or a recipe (`modelyard recipes`)")
    prepared = load_prepared(prepared_dir)
    policy = prepared.policy if augment is None else modality.policy(get_dataset(meta["name"]).augment, augment)
    preprocessor = modality.fit_preprocessor(family.preprocessing(), prepared.statistics,
                                             get_dataset(meta["name"]).schema)
    split = load_split(dataset_dir, "train")
    arrays = modality.training_arrays(split, preprocessor)
    spec = ModelSpec(
        family=family.name,
        args=family.builder_args(preprocessor.model_input(), len(meta["classes"])),
        labels=list(meta["classes"]),
        preprocessing=preprocessor.to_dict(),
        extra={"dataset": meta["name"], "dataset_sha256": meta["splits"]["train"]["sha256"],
               "config": family.model_dump(mode="json")},
    )
    torch.manual_seed(train.seed)  # the initial weights are a function of the seed, as the run's record says
    model = spec.build()
    family.prepare(model)  # pretrained weights, frozen layers
    return TrainingJob(family, spec, policy, arrays, prepared.train_indices, prepared.val_indices,
                       {k: v.detach().clone() for k, v in model.state_dict().items()})


def choose_loading(data: DataConfig, job: TrainingJob) -> str:
    """resident or streaming, as configured; auto keeps splits up to data.resident_max_mb resident."""
    if data.loading != "auto":
        return data.loading
    return "resident" if job.nbytes <= data.resident_max_mb * 1024**2 else "streaming"


def describe(job: TrainingJob, loading: str) -> str:
    return (f"{'streamed by Ray Data' if loading == 'streaming' else 'resident on each worker'} "
            f"({len(job.train_rows)} training rows, {job.nbytes / 1e6:.0f} MB)")


def rows_of(job: TrainingJob, part: str) -> dict[str, Any]:
    """The arrays of the train or val rows, for Ray Data to shard."""
    rows = job.train_rows if part == "train" else job.val_rows
    return {k: v[rows] for k, v in job.arrays.items()}
