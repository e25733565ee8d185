"""One row per answered input, the same for served traffic and for a version's reference profile.

Columns: `time` (UTC, seconds), `request_id`, `item` (the input's place in its request), `task`, `version`,
`predicted` (class index), `label`, `confidence` (the top score), `scores` (every class's), `latency_ms` (the
request's), `embedding` (the projected penultimate embedding, `monitoring.embedding`; empty where the model
or its export has none), `input` (what the model read, `encode_input`; empty where not kept), `length` and
`unknown_share` (what the modality's preprocessor describes of the input: a text's tokens and the share the
vocabulary does not know, a series' frames; NaN where it says nothing). Traffic is written in Parquet batches under
`<traffic dir>/task=<task>/version=<version>/<replica>-<time>.parquet`, a layout pyarrow, pandas, DuckDB and
Spark read as partitions; the reference profile is `reference.parquet` beside the weights of a registered
version, computed on the test split it was evaluated on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_FILE = "reference.parquet"
COLUMNS = ("time", "request_id", "item", "task", "version", "predicted", "label", "confidence", "scores",
           "latency_ms", "embedding", "input", "length", "unknown_share")
DESCRIBED = ("length", "unknown_share")


def rows(predictions: Sequence[Any], embeddings: Sequence[Any] | None, *, task: str, version: str,
         request_id: str = "", latency_ms: float = float("nan"), at: float | None = None,
         inputs: Sequence[Any] | None = None, described: Sequence[dict[str, float]] | None = None,
         ) -> list[dict[str, Any]]:
    """Rows for one request's (or one reference batch's) answers: `predictions` are `Prediction`s or their
    dicts, `embeddings` an (N, DIM) array or one array, list or None per answer (None: no embedding),
    `inputs` the decoded inputs the answers are to (None: not kept), `described` the preprocessor's
    `describe` of them."""
    at = time.time() if at is None else at
    out = []
    for i, p in enumerate(predictions):
        p = p if isinstance(p, dict) else p.to_dict()
        scores = [float(v) for v in p["scores"].values()]
        out.append({"time": at, "request_id": request_id, "item": i, "task": task, "version": str(version),
                    "predicted": int(p["index"]), "label": p["label"], "confidence": max(scores),
                    "scores": scores, "latency_ms": float(latency_ms),
                    "embedding": _listed(embeddings[i]) if embeddings is not None else [],
                    "input": encode_input(inputs[i]) if inputs is not None else b"",
                    **{k: float((described[i] if described else {}).get(k, float("nan"))) for k in DESCRIBED}})
    return out


def encode_input(value: Any) -> bytes:
    """One decoded input as bytes: a text as UTF-8 behind `t`; an array (image, series) behind `a` as its dtype
    and shape, then its raw bytes (a tenth of `np.save`'s cost, which the log pays per row)."""
    if isinstance(value, str):
        return b"t" + value.encode()
    array = np.ascontiguousarray(value)
    head = f"{array.dtype.str};{','.join(map(str, array.shape))}".encode()
    return b"a" + len(head).to_bytes(2, "big") + head + array.tobytes()


def decode_input(data: bytes) -> Any:
    """The input `encode_input` wrote."""
    kind = data[:1]
    if kind == b"t":
        return data[1:].decode()
    if kind == b"a":
        size = int.from_bytes(data[1:3], "big")
        dtype, _, shape = data[3:3 + size].decode().partition(";")
        dims = tuple(int(d) for d in shape.split(",") if d)
        return np.frombuffer(data[3 + size:], dtype=np.dtype(dtype)).reshape(dims).copy()
    raise ValueError(f"not an input encode_input wrote (it starts with {data[:8]!r})")


def _listed(embedding: Any) -> list[float]:
    if embedding is None:
        return []
    return embedding.tolist() if isinstance(embedding, np.ndarray) else list(embedding)


def table(records: list[dict[str, Any]]) -> Any:
    """`records` as a pyarrow table with the columns' fixed types."""
    import pyarrow as pa

    schema = pa.schema([("time", pa.float64()), ("request_id", pa.string()), ("item", pa.int32()),
                        ("task", pa.string()), ("version", pa.string()), ("predicted", pa.int32()),
                        ("label", pa.string()), ("confidence", pa.float32()), ("scores", pa.list_(pa.float32())),
                        ("latency_ms", pa.float32()), ("embedding", pa.list_(pa.float32())),
                        ("input", pa.binary()), ("length", pa.float32()), ("unknown_share", pa.float32())])
    return pa.Table.from_pylist(records, schema=schema)


def write(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write `records` to `path` (Parquet) through a temporary name, so a reader never sees half a file."""
    return write_table(table(records), path)


def write_table(data: Any, path: str | Path) -> Path:
    """A pyarrow table to `path` (Parquet) through a temporary name."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(data, partial)
    partial.replace(path)
    return path


def reference(predictor: Any, inputs: Any, *, task: str, version: str, batch_size: int = 256) -> list[dict[str, Any]]:
    """A version's reference profile: its answers on `inputs` (its test split), as traffic rows."""
    predictions, embeddings = predictor.predict_with_embeddings(inputs, batch_size)
    return rows(predictions, embeddings, task=task, version=version, request_id="reference",
                described=predictor.preprocessor.describe(predictor.check_batch(inputs)))


def write_reference(model_dir: str | Path, inputs: Any, task: str) -> Path:
    """A saved model's reference profile (its answers and embeddings on `inputs`, its test split's rows),
    written beside its weights as `reference.parquet`, so the registered version carries it."""
    from modelyard.inference import Predictor

    return write(reference(Predictor.from_dir(model_dir), inputs, task=task, version=""),
                 Path(model_dir) / REFERENCE_FILE)


def stamp(at: float | None = None) -> str:
    """A batch's name's time: UTC, to the microsecond (`YYYYmmddTHHMMSS.ffffff`), what `written_at` reads."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(time.time() if at is None else at, UTC).strftime("%Y%m%dT%H%M%S.%f")


def written_at(path: Path) -> float:
    """When a traffic batch was written, from its name (<writer>-<YYYYmmddTHHMMSS.ffffff>.parquet); its mtime
    for a name without it."""
    import calendar

    when = path.stem.rpartition("-")[2]
    try:
        whole, _, fraction = when.partition(".")
        return calendar.timegm(time.strptime(whole, "%Y%m%dT%H%M%S")) + float(f"0.{fraction or 0}")
    except ValueError:
        return path.stat().st_mtime


def traffic_files(traffic_dir: str | Path, task: str, version: str | None = None,
                  since: float | None = None) -> list[Path]:
    """A task's traffic batches (one version's, or all), those written since `since` (UTC seconds) only."""
    root = Path(traffic_dir) / f"task={task}"
    files = sorted((root / f"version={version}").glob("*.parquet") if version else root.glob("version=*/*.parquet"))
    if since is not None:  # a batch is named by when it was written, after all its rows: older ones are skipped
        files = [f for f in files if written_at(f) >= since]
    return files


def read_traffic(traffic_dir: str | Path, task: str, version: str | None = None, since: float | None = None) -> Any:
    """A task's logged traffic (one version's, or all) as a DataFrame, rows since `since` (UTC seconds) only;
    empty when nothing was logged."""
    import pandas as pd
    import pyarrow.parquet as pq

    files = traffic_files(traffic_dir, task, version, since)
    if not files:
        return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    # batches written before inputs were kept have no such column
    frame["input"] = [v if isinstance(v, bytes) else b"" for v in frame.get("input", [b""] * len(frame))]
    for column in DESCRIBED:
        if column not in frame:
            frame[column] = np.nan
    return frame[frame["time"] >= since].reset_index(drop=True) if since is not None else frame
