"""The Great Expectations suites that gate every dataset before training, kept as code.

Images are summarised into tables GX can check quickly (one row per image, per split, per class, per
test image against train), texts likewise (one row per text: type, UTF-8, length; per test text: exact
and near duplicate in train), and one suite per table holds the expectations. A failed expectation stops the
pipeline with a report naming the expectation, how many rows break it, and examples (split + index).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.config import ValidateConfig
from modelyard.data.dataset import (
    DatasetError,
    ImageSplit,
    Split,
    TextSplit,
    load_split,
    read_metadata,
    split_sha256,
)
from modelyard.data.datasets import DatasetSpec, get_dataset
from modelyard.data.datasets._text import near_duplicate_key

log = logging.getLogger(__name__)

RESULT_FORMAT = {
    "result_format": "SUMMARY",
    "partial_unexpected_count": 5,
}


class DataValidationError(RuntimeError):
    """The dataset broke at least one expectation; `.report` says which and where."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        failed = ", ".join(f"{c.table}.{c.expectation}({c.column or ''})" for c in report.failed)
        super().__init__(f"dataset '{report.dataset}' failed {len(report.failed)} expectation(s): {failed}")


@dataclass
class CheckResult:
    table: str
    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    success: bool
    element_count: int | None
    unexpected_count: int | None
    observed: Any
    examples: list[Any]


@dataclass
class ValidationReport:
    dataset: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(c.success for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "success": self.success,
            "checks": len(self.checks),
            "failed": len(self.failed),
            "results": [c.__dict__ for c in self.checks],
        }

    def to_markdown(self) -> str:
        status = "PASSED" if self.success else "FAILED"
        lines = [
            f"# Data validation: `{self.dataset}` {status}",
            "",
            f"{len(self.checks) - len(self.failed)} of {len(self.checks)} expectations met.",
            "",
            "| | table | expectation | column | rows | unexpected | observed / examples |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in sorted(self.checks, key=lambda c: c.success):
            mark = "ok" if c.success else "**FAIL**"
            detail = c.observed if c.observed is not None else ""
            if c.examples:
                detail = "; ".join(_fmt(e) for e in c.examples)
            lines.append(
                f"| {mark} | {c.table} | `{c.expectation}` | {c.column or ''} | {_fmt(c.element_count)} "
                f"| {_fmt(c.unexpected_count)} | {_fmt(detail)} |"
            )
        return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


# ---- the tables ---------------------------------------------------------------------------------------

def build_tables(splits: dict[str, Split], num_classes: int) -> dict[str, pd.DataFrame]:
    """Summarise splits into the tables the suites check. Works on broken data too."""
    if any(isinstance(split, TextSplit) for split in splits.values()):
        return build_text_tables(splits, num_classes)  # type: ignore[arg-type]
    image_rows, split_rows, class_rows = [], [], []
    for name, split in splits.items():
        images, labels = split.images, np.asarray(split.labels)
        n = min(len(images), len(labels))
        flat = images[:n].reshape(n, -1) if n else np.zeros((0, 1))
        numeric = np.issubdtype(images.dtype, np.number)
        as_float = flat.astype(np.float64) if numeric else np.full(flat.shape, np.nan)
        finite = np.isfinite(as_float)
        with np.errstate(invalid="ignore"):
            pix_min = np.where(finite, as_float, np.inf).min(axis=1) if n else np.zeros(0)
            pix_max = np.where(finite, as_float, -np.inf).max(axis=1) if n else np.zeros(0)
        image_rows.append(
            pd.DataFrame(
                {
                    "split": name,
                    "index": np.arange(n),
                    "label": labels[:n],
                    "ndim": images.ndim,
                    "height": images.shape[1] if images.ndim > 1 else 0,
                    "width": images.shape[2] if images.ndim > 2 else 0,
                    "channels": (images.shape[3] if images.ndim > 3 else 1) if images.ndim > 2 else 0,
                    "dtype": str(images.dtype),
                    "pixel_min": pix_min,
                    "pixel_max": pix_max,
                    "nonfinite": (~finite).sum(axis=1),
                }
            )
        )
        split_rows.append({"split": name, "images": len(images), "labels": len(labels)})
        class_rows += _class_rows(name, labels[:n], num_classes)

    tables = {
        "images": pd.concat(image_rows, ignore_index=True),
        "splits": pd.DataFrame(split_rows),
        "classes": pd.DataFrame(class_rows),
    }
    if "train" in splits and "test" in splits:
        tables["overlap"] = _overlap_table(splits["train"], splits["test"])
    return tables


def _class_rows(split: str, labels: np.ndarray, num_classes: int) -> list[dict[str, Any]]:
    n = len(labels)
    values, counts = np.unique(labels, return_counts=True) if n else (np.array([]), np.array([]))
    by_class = dict(zip(values.tolist(), counts.tolist()))
    return [{"split": split, "label": cls, "count": by_class.get(cls, 0), "fraction": by_class.get(cls, 0) / max(n, 1)}
            for cls in range(num_classes)]


def build_text_tables(splits: dict[str, TextSplit], num_classes: int) -> dict[str, pd.DataFrame]:
    """One row per text (is it a string, valid UTF-8, blank, its length), per split, per class, and per test
    text whether it, or a near copy of it (same words, other case/punctuation/spacing), is in train."""
    text_rows, split_rows, class_rows = [], [], []
    for name, split in splits.items():
        labels = np.asarray(split.labels)
        n = min(len(split.texts), len(labels))
        texts = split.texts[:n]
        strings = [t if isinstance(t, str) else "" for t in texts]
        text_rows.append(pd.DataFrame({
            "split": name,
            "index": np.arange(n),
            "label": labels[:n],
            "is_string": [isinstance(t, str) for t in texts],
            "valid_utf8": [_utf8(t) for t in strings],
            "blank": [not t.strip() for t in strings],
            "chars": [len(t) for t in strings],
            "words": [len(t.split()) for t in strings],
        }))
        split_rows.append({"split": name, "images": len(split.texts), "labels": len(labels)})
        class_rows += _class_rows(name, labels[:n], num_classes)
    texts_table = pd.concat(text_rows, ignore_index=True)
    tables = {
        "texts": texts_table,
        "splits": pd.DataFrame(split_rows).rename(columns={"images": "texts"}),
        "classes": pd.DataFrame(class_rows),
        "lengths": texts_table.groupby("split", as_index=False)["words"].mean().rename(columns={"words": "mean_words"}),
    }
    if "train" in splits and "test" in splits:
        train = [t for t in splits["train"].texts if isinstance(t, str)]
        exact, near = set(train), {near_duplicate_key(t) for t in train}
        test = [t if isinstance(t, str) else "" for t in splits["test"].texts]
        tables["overlap"] = pd.DataFrame({"split": "test", "index": np.arange(len(test)),
                                          "in_train": [t in exact for t in test],
                                          "near_in_train": [near_duplicate_key(t) in near for t in test]})
    return tables


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes that were never valid UTF-8
        return False
    return "\ufffd" not in text  # a replacement character: bytes that were lost when the file was decoded


def _overlap_table(train: ImageSplit, test: ImageSplit) -> pd.DataFrame:
    """One row per test image: is the same image (byte for byte) in train?"""
    def rows(images: np.ndarray) -> list[bytes]:
        if len(images) == 0:
            return []
        flat = np.ascontiguousarray(images.reshape(len(images), -1))
        return [r.tobytes() for r in flat]

    seen = set(rows(train.images))
    in_train = [r in seen for r in rows(test.images)]
    return pd.DataFrame({"split": "test", "index": np.arange(len(in_train)), "in_train": in_train})


# ---- the suites -----------------------------------------------------------------------------------------

def thresholds(cfg: ValidateConfig, spec: DatasetSpec) -> dict[str, float]:
    """The suite's bounds: the run's where it sets them, else the dataset's own."""
    low, high = spec.class_fraction
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return {"min_class_fraction": pick(cfg.min_class_fraction, low),
            "max_class_fraction": pick(cfg.max_class_fraction, high),
            "max_train_test_overlap": pick(cfg.max_train_test_overlap, spec.max_train_test_overlap)}


def build_suites(cfg: ValidateConfig, spec: DatasetSpec) -> dict[str, list[Any]]:
    """Expectations per table, from the dataset's spec. Imported lazily: GX takes seconds to import."""
    import great_expectations as gx

    E = gx.expectations
    num_classes = len(spec.classes)
    bounds = thresholds(cfg, spec)
    classes_and_overlap = {
        "classes": [
            E.ExpectColumnValuesToBeBetween(
                column="fraction", min_value=bounds["min_class_fraction"], max_value=bounds["max_class_fraction"]
            ),
        ],
        "overlap": [
            E.ExpectColumnValuesToBeInSet(
                column="in_train", value_set=[False], mostly=1.0 - bounds["max_train_test_overlap"]
            ),
        ],
    }
    if spec.modality == "text":
        low, high = spec.text_chars
        classes_and_overlap["overlap"].append(E.ExpectColumnValuesToBeInSet(
            column="near_in_train", value_set=[False], mostly=1.0 - bounds["max_train_test_overlap"]))
        return {
            "splits": [
                E.ExpectTableRowCountToBeBetween(min_value=2),
                E.ExpectColumnValuesToBeBetween(column="texts", min_value=1),  # no empty split
                E.ExpectColumnPairValuesToBeEqual(column_A="texts", column_B="labels"),
            ],
            "texts": [
                E.ExpectColumnValuesToBeInSet(column="is_string", value_set=[True]),
                E.ExpectColumnValuesToBeInSet(column="valid_utf8", value_set=[True]),
                E.ExpectColumnValuesToBeInSet(column="blank", value_set=[False]),
                E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(num_classes))),
                E.ExpectColumnValuesToBeBetween(column="chars", min_value=low, max_value=high),
            ],
            "lengths": [
                E.ExpectColumnValuesToBeBetween(column="mean_words", min_value=spec.mean_words[0],
                                                max_value=spec.mean_words[1]),
            ],
            **classes_and_overlap,
        }
    height, width, channels = spec.image_shape
    return {
        "splits": [
            E.ExpectTableRowCountToBeBetween(min_value=2),
            E.ExpectColumnValuesToBeBetween(column="images", min_value=1),  # no empty split
            E.ExpectColumnPairValuesToBeEqual(column_A="images", column_B="labels"),
        ],
        "images": [
            E.ExpectColumnValuesToBeInSet(column="ndim", value_set=[3 if channels == 1 else 4]),
            E.ExpectColumnValuesToBeInSet(column="height", value_set=[height]),
            E.ExpectColumnValuesToBeInSet(column="width", value_set=[width]),
            E.ExpectColumnValuesToBeInSet(column="channels", value_set=[channels]),
            E.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"]),
            E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(num_classes))),
            E.ExpectColumnValuesToBeBetween(column="nonfinite", min_value=0, max_value=0),
            E.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0, max_value=255),
            E.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0, max_value=255),
            # An all-black image carries no information: a sign of a truncated or zeroed file.
            E.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=1, mostly=0.999),
        ],
        **classes_and_overlap,
    }


def validate_splits(
    splits: dict[str, Split],
    cfg: ValidateConfig,
    spec: DatasetSpec,
) -> ValidationReport:
    """Run the dataset's suites over in-memory splits and collect one report."""
    import great_expectations as gx

    dataset = spec.name
    tables = build_tables(splits, len(spec.classes))
    suites = build_suites(cfg, spec)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas(f"{dataset}-summaries")
    report = ValidationReport(dataset=dataset)
    for table_name, expectations in suites.items():
        if table_name not in tables:
            continue
        suite = gx.ExpectationSuite(name=f"{dataset}.{table_name}")
        for expectation in expectations:
            suite.add_expectation(expectation)
        batch_def = source.add_dataframe_asset(table_name).add_batch_definition_whole_dataframe("all")
        batch = batch_def.get_batch(batch_parameters={"dataframe": tables[table_name]})
        index_cols = [c for c in ("split", "index", "label") if c in tables[table_name].columns]
        result_format = {**RESULT_FORMAT, "unexpected_index_column_names": index_cols}
        outcome = batch.validate(suite, result_format=result_format)
        for r in outcome.results:
            kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"}
            res = r.result or {}
            examples = res.get("partial_unexpected_index_list") or res.get("partial_unexpected_list") or []
            report.checks.append(
                CheckResult(
                    table=table_name,
                    expectation=r.expectation_config.type,
                    column=kwargs.get("column"),
                    kwargs=_jsonable(kwargs),
                    success=bool(r.success),
                    element_count=res.get("element_count"),
                    unexpected_count=res.get("unexpected_count"),
                    observed=_jsonable(res.get("observed_value")),
                    examples=_jsonable(list(examples)[:5]),
                )
            )
    return report


def validate_dataset(
    dataset_dir: str | os.PathLike[str], cfg: ValidateConfig, report_dir: str | os.PathLike[str] | None = None
) -> ValidationReport:
    """Validate a dataset directory; write report.md/report.json; raise DataValidationError on failure."""
    dataset_dir = Path(dataset_dir)
    meta = read_metadata(dataset_dir)
    # What the data should look like comes from the dataset's spec, never from the files being checked.
    spec = get_dataset(meta["name"])
    splits = {name: load_split(dataset_dir, name) for name in meta.get("splits", {})}
    report = validate_splits(splits, cfg, spec)
    out = Path(report_dir or cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.to_markdown())
    # What was validated, hashed from the arrays just checked: training refuses data that differ from it.
    hashes = {"split_sha256": {name: split_sha256(split) for name, split in splits.items()}}
    (out / "report.json").write_text(json.dumps({**report.to_dict(), **hashes}, indent=2, default=str) + "\n")
    log.info("validation of %s: %d/%d expectations met", meta["name"], len(report.checks) - len(report.failed),
             len(report.checks))
    if not report.success:
        raise DataValidationError(report)
    return report


class DataChangedError(DatasetError):
    """The data on disk are not the data the last validation passed."""


def check_validated(report_dir: str | os.PathLike[str], dataset_dir: str | os.PathLike[str]) -> None:
    """Refuse to go on when the validation report in `report_dir` is of this dataset but failed, or the splits
    in `dataset_dir` now hash differently from the ones it validated (changed after validation).

    A dataset with no report in `report_dir` passes with a warning (`modelyard train` on its own).
    """
    dataset_dir = Path(dataset_dir)
    meta = read_metadata(dataset_dir)
    path = Path(report_dir) / "report.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    if doc.get("dataset") != meta["name"] or "split_sha256" not in doc:
        log.warning("no validation report of %s in %s: training on data that were not validated", meta["name"],
                    report_dir)
        return
    if not doc.get("success"):
        raise DataChangedError(f"the last validation of {meta['name']} failed ({doc.get('failed')} expectation(s), "
                               f"{path}): fix the data and validate again before training")
    for name, validated in doc["split_sha256"].items():
        now = split_sha256(load_split(dataset_dir, name)) if name in meta.get("splits", {}) else "missing"
        if now != validated:
            raise DataChangedError(
                f"the {name} split in {dataset_dir} changed after validation ({validated[:12]}… validated, "
                f"{now[:12]}… now): validate it again (`modelyard validate`, or `dvc repro`) before training"
            )


def _jsonable(value: Any) -> Any:
    """numpy scalars and nested containers -> plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
