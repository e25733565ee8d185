"""The Great Expectations suites that gate every dataset before training, kept as code.

Splits are summarised into tables GX can check quickly: one row per input (its modality's columns), one per
split, one per class of each split, and one per test input saying whether it (or a near copy, where the
modality has a notion of one) is also in train; a modality may add tables of its own. One suite per table
holds the expectations: the shared ones here, the modality's from its package, with bounds from the
dataset's spec unless the run sets them. A failed expectation stops the pipeline with a report naming the
expectation, how many rows break it, and examples (split + index).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.config import ValidateConfig
from modelyard.data.dataset import DatasetError, load_split, modality_of, read_metadata
from modelyard.data.datasets import DatasetSpec, get_dataset
from modelyard.modalities import Split, get_modality

log = logging.getLogger(__name__)

RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 5}


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
        return {"dataset": self.dataset, "success": self.success, "checks": len(self.checks),
                "failed": len(self.failed), "results": [c.__dict__ for c in self.checks]}

    def to_markdown(self) -> str:
        lines = [
            f"# Data validation: `{self.dataset}` {'PASSED' if self.success else 'FAILED'}",
            "",
            f"{len(self.checks) - len(self.failed)} of {len(self.checks)} expectations met.",
            "",
            "| | table | expectation | column | rows | unexpected | observed / examples |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in sorted(self.checks, key=lambda c: c.success):
            detail = "; ".join(_fmt(e) for e in c.examples) if c.examples else c.observed
            lines.append(f"| {'ok' if c.success else '**FAIL**'} | {c.table} | `{c.expectation}` | {c.column or ''} "
                         f"| {_fmt(c.element_count)} | {_fmt(c.unexpected_count)} | {_fmt(detail)} |")
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

def build_tables(splits: Mapping[str, Split], spec: DatasetSpec) -> dict[str, pd.DataFrame]:
    """Summarise splits into the tables the suites check. Works on broken data too."""
    modality = get_modality(spec.modality)
    tables = {
        "rows": pd.concat([modality.row_table(name, split) for name, split in splits.items()], ignore_index=True),
        "splits": pd.DataFrame([{"split": name, "rows": len(split.inputs), "labels": len(split.labels)}
                                for name, split in splits.items()]),
        "classes": pd.DataFrame([row for name, split in splits.items()
                                 for row in _class_rows(name, np.asarray(split.labels), len(spec.classes))]),
        **modality.extra_tables(splits),
    }
    if "train" in splits and "test" in splits:
        train_keys = {column: set(keys) for column, keys in modality.duplicate_keys(splits["train"]).items()}
        test_keys = modality.duplicate_keys(splits["test"])
        overlap = {column: [key in train_keys[column] for key in keys] for column, keys in test_keys.items()}
        n = len(next(iter(overlap.values()), []))
        tables["overlap"] = pd.DataFrame({"split": "test", "index": np.arange(n), **overlap})
    return tables


def _class_rows(split: str, labels: np.ndarray, num_classes: int) -> list[dict[str, Any]]:
    n = len(labels)
    values, counts = np.unique(labels, return_counts=True) if n else (np.array([]), np.array([]))
    by_class = dict(zip(values.tolist(), counts.tolist()))
    return [{"split": split, "label": cls, "count": by_class.get(cls, 0), "fraction": by_class.get(cls, 0) / max(n, 1)}
            for cls in range(num_classes)]


# ---- the suites -----------------------------------------------------------------------------------------

def thresholds(cfg: ValidateConfig, spec: DatasetSpec) -> dict[str, float]:
    """The suite's bounds: the run's where it sets them, else the dataset's own."""
    low, high = spec.class_fraction
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return {"min_class_fraction": pick(cfg.min_class_fraction, low),
            "max_class_fraction": pick(cfg.max_class_fraction, high),
            "max_train_test_overlap": pick(cfg.max_train_test_overlap, spec.max_train_test_overlap)}


def build_suites(cfg: ValidateConfig, spec: DatasetSpec, overlap_columns: list[str]) -> dict[str, list[Any]]:
    """Expectations per table: the shared ones and the modality's. GX is imported here: it takes seconds."""
    import great_expectations as gx

    E = gx.expectations
    bounds = thresholds(cfg, spec)
    shared = {
        "splits": [
            E.ExpectTableRowCountToBeBetween(min_value=2),
            E.ExpectColumnValuesToBeBetween(column="rows", min_value=1),  # no empty split
            E.ExpectColumnPairValuesToBeEqual(column_A="rows", column_B="labels"),
        ],
        "classes": [E.ExpectColumnValuesToBeBetween(column="fraction", min_value=bounds["min_class_fraction"],
                                                    max_value=bounds["max_class_fraction"])],
        "overlap": [E.ExpectColumnValuesToBeInSet(column=column, value_set=[False],
                                                  mostly=1.0 - bounds["max_train_test_overlap"])
                    for column in overlap_columns],
    }
    return shared | get_modality(spec.modality).expectations(spec.schema, len(spec.classes))


def validate_splits(splits: Mapping[str, Split], cfg: ValidateConfig, spec: DatasetSpec) -> ValidationReport:
    """Run the dataset's suites over in-memory splits and collect one report."""
    import great_expectations as gx

    tables = build_tables(splits, spec)
    overlap_columns = [c for c in tables.get("overlap", pd.DataFrame()).columns if c not in ("split", "index")]
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas(f"{spec.name}-summaries")
    report = ValidationReport(dataset=spec.name)
    for table_name, expectations in build_suites(cfg, spec, overlap_columns).items():
        if table_name not in tables:
            continue
        suite = gx.ExpectationSuite(name=f"{spec.name}.{table_name}")
        for expectation in expectations:
            suite.add_expectation(expectation)
        batch = (source.add_dataframe_asset(table_name).add_batch_definition_whole_dataframe("all")
                 .get_batch(batch_parameters={"dataframe": tables[table_name]}))
        index_cols = [c for c in ("split", "index", "label") if c in tables[table_name].columns]
        outcome = batch.validate(suite, result_format={**RESULT_FORMAT, "unexpected_index_column_names": index_cols})
        report.checks += [_check(table_name, r) for r in outcome.results]
    return report


def _check(table: str, r: Any) -> CheckResult:
    kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"}
    res = r.result or {}
    examples = res.get("partial_unexpected_index_list") or res.get("partial_unexpected_list") or []
    return CheckResult(table=table, expectation=r.expectation_config.type, column=kwargs.get("column"),
                       kwargs=_jsonable(kwargs), success=bool(r.success), element_count=res.get("element_count"),
                       unexpected_count=res.get("unexpected_count"), observed=_jsonable(res.get("observed_value")),
                       examples=_jsonable(list(examples)[:5]))


def validate_dataset(dataset_dir: str | os.PathLike[str], cfg: ValidateConfig,
                     report_dir: str | os.PathLike[str]) -> ValidationReport:
    """Validate a dataset directory; write report.md/report.json; raise DataValidationError on failure."""
    dataset_dir = Path(dataset_dir)
    meta = read_metadata(dataset_dir)
    # What the data should look like comes from the dataset's spec, never from the files being checked.
    spec = get_dataset(meta["name"])
    splits = {name: load_split(dataset_dir, name) for name in meta.get("splits", {})}
    report = validate_splits(splits, cfg, spec)
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.to_markdown())
    # What was validated, hashed from the rows just checked: training refuses data that differ from it.
    modality = modality_of(meta)
    hashes = {"split_sha256": {name: modality.split_sha256(split) for name, split in splits.items()}}
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
    modality = modality_of(meta)
    for name, validated in doc["split_sha256"].items():
        now = modality.split_sha256(load_split(dataset_dir, name)) if name in meta.get("splits", {}) else "missing"
        if now != validated:
            raise DataChangedError(
                f"the {name} split in {dataset_dir} changed after validation ({validated[:12]}… validated, "
                f"{now[:12]}… now): validate it again (`modelyard validate`, or `dvc repro`) before training")


def _jsonable(value: Any) -> Any:
    """numpy scalars and nested containers -> plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
