"""Every path a stage reads or writes, computed in this one place from the config's `paths` section.

    <data_dir>/raw/<dataset>/                raw downloads, shared by every run (data_dir/raw unless raw_dir)
    <data_dir>/<dataset>/                    the dataset in the on-disk format (fetch)
    <data_dir>/samples/<dataset>/            one real test input per class, for trying the endpoint
    <artifacts_dir>/<dataset>/<family>/      the task's outputs:
        validation/                          the Great Expectations report (validate)
        prepared/                            split, statistics and augmentation policy (prepare)
        train/model/ train/tensorboard/ ...  the trained model and its history (train)
        eval/  metrics.json                  test metrics, plots, report (evaluate; DVC reads metrics.json)
        register/                            the registration and promotion decision (register)
    <artifacts_dir>/runs/<key>/              a pipeline run of its own (modelyard.runs), the same layout inside

Each task keeps its outputs apart, so training one task never overwrites another's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelyard.config import PipelineConfig


@dataclass(frozen=True)
class TaskPaths:
    data_dir: Path
    raw_root: Path
    artifacts_dir: Path
    dataset: str
    family: str

    @classmethod
    def of(cls, cfg: PipelineConfig) -> TaskPaths:
        p = cfg.paths
        data_dir = Path(p.data_dir)
        return cls(data_dir=data_dir, raw_root=Path(p.raw_dir) if p.raw_dir else data_dir / "raw",
                   artifacts_dir=Path(p.artifacts_dir), dataset=cfg.data.dataset, family=cfg.model.name)

    @property
    def raw_dir(self) -> Path:
        return self.raw_root / self.dataset

    @property
    def dataset_dir(self) -> Path:
        return self.data_dir / self.dataset

    @property
    def samples_dir(self) -> Path:
        return self.data_dir / "samples" / self.dataset

    @property
    def task_dir(self) -> Path:
        return self.artifacts_dir / self.dataset / self.family

    @property
    def validation_dir(self) -> Path:
        return self.task_dir / "validation"

    @property
    def prepared_dir(self) -> Path:
        return self.task_dir / "prepared"

    @property
    def train_dir(self) -> Path:
        return self.task_dir / "train"

    @property
    def model_dir(self) -> Path:
        return self.train_dir / "model"

    @property
    def eval_dir(self) -> Path:
        return self.task_dir / "eval"

    @property
    def metrics_path(self) -> Path:
        return self.task_dir / "metrics.json"

    @property
    def register_dir(self) -> Path:
        return self.task_dir / "register"

    @property
    def search_dir(self) -> Path:
        """The last hyper-parameter search's report, trials and Tune state (modelyard.tuning)."""
        return self.task_dir / "search"

    @property
    def runs_root(self) -> Path:
        return self.artifacts_dir / "runs"

    def published(self) -> list[Path]:
        """What a pipeline run publishes to the stable paths, in the order it is copied."""
        return [self.dataset_dir, self.validation_dir, self.prepared_dir, self.train_dir, self.eval_dir,
                self.register_dir, self.metrics_path, self.search_dir]
