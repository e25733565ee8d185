"""What a search found: each trial's record, the search's result, and how trials rank."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from modelyard.tuning.trial import METRIC

SEARCH_TAG = "modelyard.search.run_id"  # on a winner's training run and its registered version
TRIAL_TAG = "modelyard.search.trial"


@dataclass
class TrialRecord:
    """One trial as the report shows it."""

    trial_id: str
    sample: dict[str, Any]
    epochs_planned: int
    history: list[dict[str, float]]  # what it reported, epoch by epoch
    status: str  # completed | stopped | failed
    reason: str  # why it ended
    seconds: float
    run_id: str | None = None  # its MLflow child run
    started_s: float = 0.0  # after the first trial's start

    @property
    def score(self) -> float:
        return self.history[-1][METRIC] if self.history else float("nan")

    @property
    def epochs_run(self) -> int:
        return len(self.history)


@dataclass
class SearchResult:
    """What a search found, and where it put its report."""

    task: str
    parent_run_id: str | None
    space: dict[str, Any]
    settings: dict[str, Any]
    trials: list[TrialRecord]  # ranked, best first
    engine: str
    concurrency: int
    wall_s: float
    out_dir: str
    report_md: str = ""
    importance: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> TrialRecord:
        return self.trials[0]

    @property
    def stopped_early(self) -> int:
        return sum(t.status == "stopped" for t in self.trials)

    def summary(self) -> dict[str, Any]:
        """What a flow run returns of the search: its MLflow run, counts, the best trial and its settings."""
        return {"parent_run_id": self.parent_run_id, "trials": len(self.trials), "stopped_early": self.stopped_early,
                "best": {"trial": self.best.trial_id, "val_accuracy": self.best.score, "settings": self.best.sample},
                "wall_s": self.wall_s, "engine": self.engine, "concurrency": self.concurrency}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"best": asdict(self.best), "stopped_early": self.stopped_early}


def rank(trials: list[TrialRecord]) -> list[TrialRecord]:
    """Best first: trials that ran their whole schedule before those stopped or failed, then by score, then by
    the lower validation loss (many small sets tie on accuracy)."""
    order = {"completed": 0, "stopped": 1, "failed": 2}

    def key(t: TrialRecord) -> tuple[int, float, float]:
        last = t.history[-1] if t.history else {}
        return (order[t.status], -(t.score if not math.isnan(t.score) else -1), last.get("val/loss", math.inf))

    return sorted(trials, key=key)
