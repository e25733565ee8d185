"""Labels back in: the true labels callers post for answered requests (`POST /<task>/feedback`), joined with
the traffic log's rows, as live accuracy per version and as a feedback data set that the next training adds
to its training split.

Labels are written as Parquet batches beside the task's traffic,
`<traffic dir>/task=<task>/feedback/<replica>-<time>.parquet`, one row per labelled input: `time`,
`request_id`, `item`, `label` (the class name), `index` (its number), `version` (the champion when it was
posted). A later label for the same input replaces an earlier one.

The feedback data set is a dataset directory in the on-disk format (modelyard.data.dataset) with the task's
classes and two splits: `train`, which `data.feedback` adds to a training run's training split, and
`holdout`, scored apart so that what the feedback taught is measured on feedback the model did not train on.
Which split an input goes to is fixed by a hash of its request id and place, so a rebuild with more labels
never moves one from holdout to train.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.monitoring.profile import decode_input, stamp, traffic_files, written_at

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("time", "request_id", "item", "label", "index", "version")
FEEDBACK_DIR = "feedback"  # under <traffic dir>/task=<task>/
REQUEST_ID_PATTERN = r"[A-Za-z0-9._:-]{1,128}"  # what Serve's ingress makes, and what a caller may send
MAX_LABELS = 1000  # in one POST /feedback
LABEL_LOOKBACK_S = 7 * 24 * 3600  # a label is matched with a request answered at most this long before it


def parse_labels(doc: Any, classes: list[str], version: str, max_items: int) -> list[dict[str, Any]]:
    """The label rows of a feedback body (a JSON object: one label, or `{"feedback": [...]}`), every one
    checked; InvalidInputError names the first bad one (`unknown_label` for a class the model has not)."""
    import re

    from modelyard.modalities import InvalidInputError

    many = isinstance(doc, dict) and "feedback" in doc
    if many and set(doc) != {"feedback"}:
        raise InvalidInputError("invalid_feedback", "a body with 'feedback' has nothing else")
    entries = doc["feedback"] if many else [doc]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_LABELS:
        raise InvalidInputError("invalid_feedback", f"'feedback' must be a list of 1 to {MAX_LABELS} labels")
    now, rows = time.time(), []
    for n, entry in enumerate(entries):
        where = f"feedback[{n}]" if many else "the body"
        if not isinstance(entry, dict) or set(entry) - {"request_id", "item", "label"}:
            raise InvalidInputError("invalid_feedback", f"{where} must be an object with request_id, label and "
                                                        "optionally item")
        request_id, item, label = entry.get("request_id"), _whole(entry.get("item", 0)), _whole(entry.get("label"))
        if not isinstance(request_id, str) or not re.fullmatch(REQUEST_ID_PATTERN, request_id):
            raise InvalidInputError("invalid_feedback", f"{where}: request_id must be the X-Request-ID an answer "
                                                        "came with (1-128 of A-Z a-z 0-9 . _ : -)")
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < max_items:
            raise InvalidInputError("invalid_feedback", f"{where}: item must be the input's place in its request, "
                                                        f"0 to {max_items - 1}")
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(classes):
            label = classes[label]
        if not isinstance(label, str) or label not in classes:
            raise InvalidInputError("unknown_label", f"{where}: label {label!r} is not one of the model's classes "
                                                     f"({', '.join(classes)}) or their numbers 0-{len(classes) - 1}")
        rows.append({"time": now, "request_id": request_id, "item": item, "label": label,
                     "index": classes.index(label), "version": version})
    return rows


def _whole(value: Any) -> Any:
    """JSON's 2.0 is the integer 2 (JSON Schema says so too)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def labels_dir(traffic_dir: str | Path, task: str) -> Path:
    return Path(traffic_dir) / f"task={task}" / FEEDBACK_DIR


def write_labels(traffic_dir: str | Path, task: str, records: list[dict[str, Any]], writer: str) -> Path:
    """One batch of labels, written before the caller is answered (a name a reader never sees half of)."""
    import pyarrow as pa

    from modelyard.monitoring.profile import write_table

    schema = pa.schema([("time", pa.float64()), ("request_id", pa.string()), ("item", pa.int32()),
                        ("label", pa.string()), ("index", pa.int32()), ("version", pa.string())])
    # a batch per POST: two of one replica in the same microsecond must not share a name
    return write_table(pa.Table.from_pylist(records, schema=schema),
                       labels_dir(traffic_dir, task) / f"{writer}-{uuid.uuid4().hex[:8]}-{stamp()}.parquet")


def read_labels(traffic_dir: str | Path, task: str, since: float | None = None) -> Any:
    """The task's labels (the latest per input), posted since `since` (UTC seconds) when given."""
    import pandas as pd
    import pyarrow.parquet as pq

    files = sorted(labels_dir(traffic_dir, task).glob("*.parquet"))
    if since is not None:
        files = [f for f in files if written_at(f) >= since]
    if not files:
        return pd.DataFrame(columns=list(LABEL_COLUMNS))
    frame = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    if since is not None:
        frame = frame[frame["time"] >= since]
    return frame.sort_values("time").drop_duplicates(["request_id", "item"], keep="last").reset_index(drop=True)


def labelled(traffic_dir: str | Path, task: str, since: float | None = None, *, inputs: bool = False,
             lookback_s: float | None = LABEL_LOOKBACK_S) -> Any:
    """Labels posted since `since`, each with the traffic row of the input it is for (its served version,
    prediction and, with `inputs`, the input itself), from batches written at most `lookback_s` before the
    first of them (None: all). Labels for requests the log does not hold (not sampled, a mistyped id) are left
    out. Batch by batch, only the labelled rows are kept, so memory follows the labels, not the traffic."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    labels = read_labels(traffic_dir, task, since)
    columns = ["time", "request_id", "item", "version", "predicted", *(["input"] if inputs else [])]
    empty = labels.iloc[0:0].assign(predicted=[], served_version=[], **({"input": []} if inputs else {}))
    if labels.empty:
        return empty
    earliest = float(labels["time"].min()) - lookback_s if lookback_s is not None else None
    wanted = pa.array(sorted(set(labels["request_id"])))
    parts = []
    for path in traffic_files(traffic_dir, task, since=earliest):
        table = pq.read_table(path, columns=[c for c in columns if c in pq.read_schema(path).names])
        parts.append(table.filter(pc.is_in(table["request_id"], value_set=wanted)).to_pandas())
    traffic = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    if traffic.empty:
        return empty
    if inputs and "input" in traffic:  # batches written before inputs were kept have none
        traffic["input"] = [v if isinstance(v, bytes) else b"" for v in traffic["input"]]
    # A request id a caller reuses: each label goes with the last answer of that id
    traffic = traffic.sort_values("time").drop_duplicates(["request_id", "item"], keep="last")
    traffic = traffic.drop(columns="time").rename(columns={"version": "served_version"})
    return labels.merge(traffic, on=["request_id", "item"], how="inner")


def live_accuracy(frame: Any) -> dict[str, dict[str, float]]:
    """{version: {"accuracy", "labelled"}} of labelled requests (`labelled`'s frame), per version served."""
    out = {}
    for version, part in frame.groupby("served_version"):
        out[str(version)] = {"accuracy": float((part["predicted"] == part["index"]).mean()),
                             "labelled": int(len(part))}
    return out


def in_holdout(request_id: str, item: int, share: float) -> bool:
    """Whether this input's label is held out of training: fixed by its id, whatever else is labelled."""
    digest = hashlib.sha256(f"{request_id}/{item}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def build_feedback_set(traffic_dir: str | Path, task: str, classes: list[str], modality: str, out_dir: str | Path,
                       *, holdout_share: float = 0.2) -> dict[str, Any]:
    """Write the task's feedback data set (every labelled input the log kept) to `out_dir`; returns its
    summary (counts per split, labels without a logged input, the data's hash)."""
    from modelyard.data.dataset import contents_sha256, write_dataset
    from modelyard.modalities import get_modality

    frame = labelled(traffic_dir, task, inputs=True, lookback_s=None)
    kept = frame[frame["input"].map(len) > 0] if len(frame) else frame
    all_labels = len(read_labels(traffic_dir, task))
    unknown = sorted(set(kept["label"]) - set(classes)) if len(kept) else []
    if unknown:
        raise ValueError(f"labels of {task} name classes its dataset does not have: {unknown}")
    kind = get_modality(modality)
    splits: dict[str, Any] = {}
    if len(kept):
        held = np.array([in_holdout(r, int(i), holdout_share) for r, i in zip(kept["request_id"], kept["item"])])
        inputs = [decode_input(bytes(b)) for b in kept["input"]]
        labels = np.array([classes.index(name) for name in kept["label"]], dtype=np.int64)
        for name, mask in (("train", ~held), ("holdout", held)):
            if mask.any():
                splits[name] = kind.make_split([x for x, m in zip(inputs, mask) if m], labels[mask])
    if not splits:
        raise LookupError(f"no labelled input of {task} under {traffic_dir}: {all_labels} labels, none for a "
                          "request the traffic log kept the input of")
    out = write_dataset(out_dir, splits, classes, source=f"feedback on {task} ({traffic_dir})",
                        name=f"feedback-{task}", modality=modality)
    meta = json.loads((out / "dataset.json").read_text())
    summary = {"path": str(Path(out).resolve()), "task": task, "labels": all_labels,
               "unmatched": all_labels - len(kept),
               **{f"{name}_rows": meta["splits"].get(name, {}).get("count", 0) for name in ("train", "holdout")},
               "sha256": contents_sha256(meta)}
    log.info("feedback set of %s at %s: %d train, %d holdout (%d labels without a kept input)", task, out,
             summary["train_rows"], summary["holdout_rows"], summary["unmatched"])
    return summary
