"""A replica's traffic log: the rows of the requests it answered (modelyard.monitoring.profile), buffered in
memory and written as one Parquet file per task, version and `flush_every_s` by the replica's background
thread, never on a request's path. A request that is not sampled costs one random draw."""

from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

from modelyard.monitoring import profile

log = logging.getLogger("modelyard.serving")

MAX_BUFFERED = 100_000  # rows held when writing keeps failing (a full disk): the oldest are dropped past it


class TrafficLog:
    def __init__(self, directory: str, task: str, replica: str, sample: float, keep_inputs: bool = True) -> None:
        self.directory, self.task, self.replica, self.sample = Path(directory), task, replica, sample
        self.keep_inputs = keep_inputs
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.written = 0

    def wants(self) -> bool:
        return self.sample >= 1.0 or random.random() < self.sample

    def add(self, answers: list[dict[str, Any]], embeddings: list[Any], request_id: str, latency_ms: float,
            inputs: list[Any] | None = None) -> None:
        new = profile.rows(answers, embeddings, task=self.task, version=answers[0]["model"]["version"],
                           request_id=request_id, latency_ms=latency_ms,
                           inputs=inputs if self.keep_inputs else None)
        with self._lock:
            self._rows.extend(new)
            del self._rows[:-MAX_BUFFERED]

    def flush(self) -> int:
        """Write what is buffered, one file per version; returns the rows written."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:]
        by_version: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_version.setdefault(row["version"], []).append(row)
        written, unwritten = 0, []
        for version, part in by_version.items():
            try:
                profile.write(part, self.directory / f"task={self.task}" / f"version={version}"
                              / f"{self.replica}-{stamp}.parquet")
                written += len(part)
            except Exception:  # the log must never take serving down: keep these rows for the next try
                log.exception("could not write %d traffic rows of %s v%s under %s", len(part), self.task, version,
                              self.directory)
                unwritten += part
        if unwritten:
            with self._lock:
                self._rows[:0] = unwritten
                del self._rows[:-MAX_BUFFERED]
        self.written += written
        return written
