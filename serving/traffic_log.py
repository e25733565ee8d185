"""A replica's traffic log: the rows of the requests it answered (modelyard.monitoring.profile), written as
one Parquet file per task, version and `flush_every_s` by the replica's background thread. On a request's
path a sampled request is only appended to a list, as it came (answers, embeddings, inputs); its rows (the
inputs encoded, and described by the model's preprocessor) are made off the path, in `flush`. A request that
is not sampled costs one random draw."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.monitoring import profile

log = logging.getLogger("modelyard.serving")

MAX_BUFFERED = 100_000  # rows held when writing keeps failing (a full disk): the oldest are dropped past it
MAX_PENDING = 20_000  # requests held between two flushes (past it the oldest are dropped)


class TrafficLog:
    def __init__(self, directory: str, task: str, replica: str, sample: float, keep_inputs: bool = True) -> None:
        self.directory, self.task, self.replica, self.sample = Path(directory), task, replica, sample
        self.keep_inputs = keep_inputs
        self.describe: Callable[[list[Any]], list[dict[str, float]]] | None = None  # the preprocessor's
        self._pending: list[tuple[Any, ...]] = []
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.written = 0

    def wants(self) -> bool:
        return self.sample >= 1.0 or random.random() < self.sample

    def add(self, answers: list[dict[str, Any]], embeddings: list[Any], request_id: str, latency_ms: float,
            inputs: list[Any] | None = None) -> None:
        with self._lock:
            self._pending.append((time.time(), answers, embeddings, request_id, latency_ms, inputs))
            del self._pending[:-MAX_PENDING]

    def _made_rows(self) -> list[dict[str, Any]]:
        """The rows of the requests added since the last call."""
        with self._lock:
            pending, self._pending = self._pending, []
        rows: list[dict[str, Any]] = []
        for at, answers, embeddings, request_id, latency_ms, inputs in pending:
            described = None
            if self.describe is not None and inputs is not None:
                try:
                    described = self.describe(inputs)
                except Exception:  # a description is extra: the row is still worth writing
                    log.exception("could not describe the inputs of request %s", request_id)
            rows += profile.rows(answers, embeddings, task=self.task, version=answers[0]["model"]["version"],
                                 request_id=request_id, latency_ms=latency_ms, at=at, described=described,
                                 inputs=inputs if self.keep_inputs else None)
        return rows

    def flush(self) -> int:
        """Write what is buffered, one file per version; returns the rows written."""
        new = self._made_rows()
        with self._lock:
            rows, self._rows = self._rows + new, []
        if not rows:
            return 0
        stamp = profile.stamp()
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
