"""Batch inference over a task's champion with Ray Data: a folder of images, a JSON-lines file of records, or a
Parquet file in; Parquet out, one row per input, in the input's order.

    summary = predict_batch(tracking_uri, "fashion-mnist-cnn", "photos/", "predictions/")

Ray Data reads the input in blocks and `map_batches` runs them through a pool of actors, each holding the
champion once (the ONNX backend where its export passed the parity check at registration, torch otherwise,
as the replicas do) and decoding every record with the modality's codec, the code the HTTP endpoint decodes
a request body with. A record that does not decode (an unreadable image, an empty text, a line that is not
JSON) gets its `error` column filled and no prediction; it is neither dropped nor fatal. Every row carries the
model's name and version. The output directory appears only when every block is written (a failed run leaves
nothing half-written where the output should be), and an existing one is not overwritten unless asked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.modalities import InvalidInputError, Limits
from modelyard.registry import versions

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 16 * 1024 * 1024  # one image file or record; the endpoint's limit is 4 MiB per body
IMAGES, JSONL, PARQUET = "images", "jsonl", "parquet"


@dataclass(frozen=True)
class BatchSummary:
    model_name: str
    model_version: str
    backend: str
    input_kind: str
    rows: int
    errors: int
    seconds: float  # from the first block read to the last written, model loading included
    output: str

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rows_per_s": round(self.rows_per_s, 1)}

    def to_markdown(self) -> str:
        """One table row, for the flow run's artifact."""
        return ("| task | version | backend | input | rows | with an error | seconds | rows/s | output |\n"
                "|---|---|---|---|---|---|---|---|---|\n"
                f"| {self.model_name} | {self.model_version} | {self.backend} | {self.input_kind} | {self.rows} | "
                f"{self.errors} | {self.seconds} | {self.rows_per_s:.0f} | {self.output} |")


def input_kind(path: Path) -> str:
    """images (a folder), jsonl (.jsonl / .ndjson) or parquet (.parquet, or a folder of them); anything else is
    an error that says what is accepted."""
    if path.is_dir():
        return PARQUET if any(path.glob("*.parquet")) else IMAGES
    if path.suffix in (".jsonl", ".ndjson"):
        return JSONL
    if path.suffix == ".parquet":
        return PARQUET
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    raise ValueError(f"{path}: expected a folder of images, a JSON-lines file (.jsonl) or a Parquet file "
                     f"(.parquet)")


class ChampionBatches:
    """The `map_batches` callable: one per actor, holding one version of the model."""

    def __init__(self, tracking_uri: str, model_name: str, version: str, kind: str, backend: str = "onnxruntime",
                 threads: int = 1) -> None:  # one torch / ONNX Runtime thread: the pool is the parallelism
        import torch

        from modelyard.inference import Predictor

        torch.set_num_threads(threads)
        with versions.fetched_model_dir(tracking_uri, model_name, version=version) as (model_dir, mv):
            self.predictor = Predictor.from_dir(model_dir, backend=backend, threads=threads)
        self.codec = self.predictor.spec.modality.codec(self.predictor.preprocessor,
                                                        Limits(MAX_RECORD_BYTES, max_items=1))
        self.name, self.version, self.kind = model_name, str(mv.version), kind
        self.field = self.codec.record_field

    def _records(self, batch: dict[str, np.ndarray]) -> tuple[list[Any], dict[str, list[Any]]]:
        """(the raw record of each row, the columns that pass through to the output)."""
        n = len(next(iter(batch.values())))
        if self.kind == IMAGES:
            return list(batch["bytes"]), {"path": [str(p) for p in batch["path"]]}
        if self.kind == JSONL:
            return list(batch["text"]), {"line": list(batch["text"])}
        passed = {k: list(v) for k, v in batch.items() if k != self.field}
        return list(batch[self.field]) if self.field in batch else [None] * n, passed

    def _decode(self, raw: Any) -> Any:
        if self.kind == JSONL:
            try:
                doc = json.loads(raw)
            except ValueError as exc:
                raise InvalidInputError("not_json", f"the line is not JSON: {exc}") from None
            if not isinstance(doc, dict) or self.field not in doc:
                raise InvalidInputError("missing_field", f'expected an object with "{self.field}"')
            raw = doc[self.field]
        if raw is None:
            raise InvalidInputError("missing_field", f'no "{self.field}" in this row')
        return self.codec.decode_record(raw)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        records, out = self._records(batch)
        items, rows, errors = [], [], [None] * len(records)
        for i, raw in enumerate(records):
            try:
                items.append(self._decode(raw))
                rows.append(i)
            except InvalidInputError as exc:
                errors[i] = f"{exc.code}: {exc.message}"
        labels: list[str | None] = [None] * len(records)
        index: list[int | None] = [None] * len(records)
        scores: list[str | None] = [None] * len(records)
        if items:
            probs = self.predictor.predict_proba(self.codec.collate(items))
            for row, p in zip(rows, probs):
                best = int(p.argmax())
                labels[row], index[row] = self.predictor.labels[best], best
                scores[row] = json.dumps({k: round(float(v), 6) for k, v in zip(self.predictor.labels, p)})
        return out | {"prediction": labels, "index": index, "scores": scores, "error": errors,
                      "model_name": [self.name] * len(records), "model_version": [self.version] * len(records),
                      "backend": [self.predictor.backend] * len(records)}


RECORD_FIELDS = ("image", "text", "series")  # the codecs' `record_field`s


def read_input(path: Path, kind: str) -> Any:
    import ray.data

    if kind == IMAGES:
        return ray.data.read_binary_files(str(path), include_paths=True)
    if kind == JSONL:  # lines as text: a line that is not JSON is an error row, not a failed read
        return ray.data.read_text(str(path))
    ds = ray.data.read_parquet(str(path))
    if not set(RECORD_FIELDS) & set(ds.schema().names):
        raise ValueError(f"{path}: no column of records ({', '.join(RECORD_FIELDS)}); it has {ds.schema().names}")
    return ds


def predict_batch(tracking_uri: str, model_name: str, input_path: str | os.PathLike[str],
                  output_path: str | os.PathLike[str], *, version: str | None = None, alias: str = "champion",
                  backend: str = "onnxruntime", workers: int | None = None, batch_size: int = 64,
                  overwrite: bool = False) -> BatchSummary:
    """Predict every record of `input_path` with `model_name`'s `alias` version (or `version`) and write Parquet
    to `output_path` (a folder of part files). Needs a Ray: the one connected, or a local one it starts."""
    import ray

    from modelyard.runtime import connect_ray

    source, output = Path(input_path), Path(output_path)
    kind = input_kind(source)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite to replace it")
    found = versions.get_version(tracking_uri, model_name, version=version, alias=None if version else alias)
    if found is None:
        raise LookupError(f"no {'version ' + version if version else repr(alias) + ' version'} of '{model_name}'")
    started_ray = not ray.is_initialized()
    connect_ray(None)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent.resolve()))
    try:
        t0 = time.perf_counter()
        ray.data.DataContext.get_current().execution_options.preserve_order = True  # rows out in the input's order
        ds = read_input(source, kind)
        # The actors must leave a CPU to the read tasks that feed them, or neither moves (2 actors of 1 CPU on 2
        # CPUs wait forever for blocks nobody can read).
        cpus = float(ray.cluster_resources().get("CPU", 1))
        pool = workers or max(1, int(cpus) - 1)
        actor_cpus = max(0.25, min(1.0, (cpus - 1) / pool))
        log.info("batch inference: %d actor(s) of %.2g CPU holding %s v%s", pool, actor_cpus, model_name, found.version)
        predicted = ds.map_batches(
            ChampionBatches, batch_size=batch_size, concurrency=pool, num_cpus=actor_cpus,
            fn_constructor_kwargs={"tracking_uri": tracking_uri, "model_name": model_name,
                                   "version": str(found.version), "kind": kind, "backend": backend})
        predicted.write_parquet(str(staging))
        seconds = time.perf_counter() - t0
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        written = pq.read_table(staging, columns=["error", "backend"])  # two small columns, for the summary
        rows = written.num_rows
        errors = rows - written["error"].null_count
        backend_used = ",".join(sorted(pc.unique(written["backend"]).to_pylist())) if rows else backend
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if started_ray:
            ray.shutdown()
    summary = BatchSummary(model_name, str(found.version), backend_used, kind, rows, errors, round(seconds, 2),
                           str(output))
    log.info("predicted %d rows (%d with an error) with %s v%s in %.1f s (%.0f rows/s) -> %s", rows, errors,
             model_name, found.version, seconds, summary.rows_per_s, output)
    return summary
