"""What rank 0 records of a run: TensorBoard events, and metrics and tags through a sink the caller passes in
(the pipeline passes modelyard.registry's MLflow run logger; training itself imports no tracking client).

The events are written to a directory on rank 0's own node and travel inside each checkpoint (see
`distributed.RaySession`), so they reach the driver through the run's storage like the weights do: on a cluster of
separate machines nothing reads a file only another node wrote."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class MetricsSink(Protocol):
    """Where metrics and tags of a run go (picklable: it travels to the workers)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def logged_steps(self, key: str) -> set[int]: ...


class Rank0Tracker:
    """TensorBoard events and the sink's metrics, written by rank 0 only."""

    def __init__(self, rank: int, events_dir: str | None, sink: MetricsSink | None,
                 resume_at: int | None = None) -> None:
        self.active = rank == 0
        self.sink = sink if self.active else None
        self.writer = None
        if self.active and events_dir:  # no events dir (a local, untracked run): no events
            from torch.utils.tensorboard import SummaryWriter

            # After a restart, events an earlier attempt wrote from the resumed step on are hidden.
            self.writer = SummaryWriter(log_dir=str(Path(events_dir)), purge_step=resume_at)

    def backfill(self, history: list[dict[str, float]]) -> None:
        """Log the checkpointed epochs the sink has not got (a failure between checkpoint and log)."""
        if self.sink is None:
            return
        have = self.sink.logged_steps("val/accuracy")
        for metrics in history:
            if int(metrics["epoch"]) not in have:
                self.log(metrics, step=int(metrics["epoch"]))

    def events(self, metrics: dict[str, float], step: int) -> None:
        """Write the epoch's TensorBoard events (before its checkpoint, which carries them)."""
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Send the epoch's metrics to the sink (after its checkpoint: an epoch re-run after a failure is logged
        once)."""
        if self.sink is not None:
            self.sink.log_metrics(metrics, step=step)

    def tags(self, tags: dict[str, Any]) -> None:
        """What this run resolved at run time (precision, workers), recorded with its metrics."""
        if self.sink is not None:
            self.sink.set_tags(tags)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
