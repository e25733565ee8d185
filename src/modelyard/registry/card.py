"""A model card per registered version: what a person deciding to use it needs. The task and its classes, the
data it learnt from (sizes and hashes), its test metrics per class, its ONNX export's parity, its latency
measured at registration, the inputs it refuses and why, how to call it, and what it was trained from.

The register stage builds it (`build_card`) before logging the model and saves it beside the weights
(`model_card.json`), so the registered artifact carries it and serving's GET /<task>/model returns it
(`read_card`); `render_card` is the markdown that becomes the version's MLflow description and
`register/model_card.md`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.artifact import read_spec
from modelyard.data.dataset import read_metadata
from modelyard.modalities import Codec, Limits, Split

CARD_FILE = "model_card.json"
CARD_FORMAT = "modelyard-card/1"
LATENCY_BATCH = 32  # rows of the batched measurement (serving's default max_batch_size)
LATENCY_CALLS = {"single": 30, "batch": 10}  # timed calls of each kind, after the warm-up calls
# The first calls of a shape are many times slower (torch's and ONNX Runtime's kernels and buffers for it): on a
# small MLP the first two batches of 32 took 40 and 16 ms, the rest 0.5 ms.
LATENCY_WARMUP = 3
LATENCY_BUDGET_S = 5.0  # a large model on a small CPU stops early, after at least 3 calls of each kind
MAX_DESCRIPTION_CHARS = 5000  # MLflow's model version description column (VARCHAR(5000) on MySQL/Postgres)


@dataclass(frozen=True)
class CardSources:
    """What the register stage knows of a version before it logs it."""

    task: str  # the registered model's name
    dataset_dir: Path
    evaluation: dict[str, Any]  # evaluation.json
    train_info: dict[str, Any]  # train.json
    run_id: str
    params: dict[str, str]  # the training run's MLflow params (train.epochs, ...)
    lineage: dict[str, str]  # git and DVC hashes (modelyard.lineage)
    url: str  # where the task's predict answers
    limits: Limits  # what serving lets one request hold
    backend: str  # serve.backend: what runs the forward pass in serving
    sample: Path  # a real test input to send (data/samples/<dataset>/)


def build_card(src: CardSources, model_dir: Path, onnx: dict[str, Any], test: Split) -> dict[str, Any]:
    """The card of the model in `model_dir` (its ONNX report as the `onnx.*` version tags, empty when it was not
    exported); its latency is measured here on `test` inputs. `version` is None until the model is logged."""
    spec = read_spec(model_dir)
    meta = read_metadata(src.dataset_dir)
    codec = spec.modality.codec(spec.preprocessor(), src.limits)
    return {
        "format": CARD_FORMAT, "task": src.task, "version": None, "modality": spec.modality.name,
        "noun": spec.modality.noun, "family": spec.family, "classes": list(spec.labels),
        "data": _data(meta, src.lineage),
        "test": _test_metrics(src.evaluation),
        "onnx": _onnx(onnx),
        "latency": measure_latency(model_dir, test, src.backend),
        "refuses": _refusals(codec),
        "call": {"method": "POST", "url": src.url, "content_type": codec.content_type, "summary": codec.summary(),
                 "curl": spec.modality.request_example(_shown(src.sample), src.url)},
        "trained_from": _trained_from(src, spec.family, spec.args),
    }


def write_card(model_dir: Path, card: dict[str, Any]) -> Path:
    path = Path(model_dir) / CARD_FILE
    path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return path


def read_card(model_dir: str | os.PathLike[str], version: str) -> dict[str, Any] | None:
    """The card saved with a registered model, as version `version`; None for versions registered before cards."""
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()) | {"version": str(version)}


def _data(meta: dict[str, Any], lineage: dict[str, str]) -> dict[str, Any]:
    splits = meta["splits"]
    feedback = meta.get("feedback")  # labelled served traffic whose rows joined train (modelyard.data.fetch)
    return {"dataset": meta["name"], "source": meta.get("source"),
            **{name: {"count": splits[name]["count"], "sha256": splits[name]["sha256"]} for name in ("train", "test")},
            "feedback": {"train_rows": feedback["train_rows"], "holdout_rows": feedback["holdout_rows"],
                         "sha256": feedback["sha256"]} if feedback else None,
            "dvc_md5": lineage.get("dvc.md5.dataset")}


def _test_metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    headline = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "count", "test_set_sha256")
    return {k: evaluation[k] for k in headline} | {"per_class": {
        label: {k: m[k] for k in ("precision", "recall", "f1", "support")}
        for label, m in evaluation["per_class"].items()},
        "feedback_holdout": evaluation.get("feedback_holdout")}  # accuracy on held-out feedback, when trained on it


def _onnx(tags: dict[str, Any]) -> dict[str, Any]:
    if not tags:
        return {"status": "not exported", "reason": "registry.export_onnx was off at registration"}
    return {k: tags.get(f"onnx.{k}") for k in ("status", "rows", "max_abs_logit_diff", "argmax_agreement", "reason")}


def _refusals(codec: Codec) -> list[dict[str, Any]]:
    rows = [{"code": code, "status": codec.statuses[code], "reason": reason} for code, reason in codec.refusals().items()]
    return sorted(rows, key=lambda r: (r["status"], r["code"]))


def _shown(path: Path) -> Path:
    """`path` relative to the working directory when it is under it (data/samples/...), else as it is."""
    relative = os.path.relpath(path)
    return Path(relative) if not relative.startswith("..") else path


def _trained_from(src: CardSources, family: str, model_args: dict[str, Any]) -> dict[str, Any]:
    p, info, lineage = src.params, src.train_info, src.lineage
    return {
        "run_id": src.run_id, "recipe": _param(p, "recipe"), "family": family, "model_args": model_args,
        "git_commit": lineage.get("git.commit"), "git_dirty": lineage.get("git.dirty") == "true",
        "dataset_md5": lineage.get("dvc.md5.dataset"), "prepared_md5": lineage.get("dvc.md5.prepared"),
        "epochs": info.get("epochs", _param(p, "train.epochs")), "batch_size": _param(p, "train.batch_size"),
        "learning_rate": _param(p, "train.learning_rate"), "optimizer": _param(p, "train.optimizer"),
        # what training resolved (auto -> bf16, auto workers -> 1) where train.json says, else as configured
        "precision": info.get("precision", _param(p, "train.mixed_precision")),
        "engine": _param(p, "train.engine"), "strategy": _param(p, "train.strategy"),
        "workers": info.get("num_workers", _param(p, "train.num_workers")), "device": info.get("device"),
        "wall_time_s": info.get("wall_time_s"),
    }


def _param(params: dict[str, str], key: str) -> Any:
    """An MLflow param (logged as str(value)) as the value it was."""
    value = params.get(key)
    if value is None or value == "None":
        return None
    try:
        return json.loads(value)
    except ValueError:
        return {"True": True, "False": False}.get(value, value)


# ---- latency ------------------------------------------------------------------------------------------------

def measure_latency(model_dir: Path, test: Split, backend: str) -> dict[str, Any]:
    """Milliseconds per call of `Predictor.predict` on real test inputs, with the backend serving would use: the
    median of single-input calls, and per row of a batch of LATENCY_BATCH (no HTTP, no queueing)."""
    import torch

    from modelyard.inference import Predictor

    threads = torch.get_num_threads()
    predictor = Predictor.from_dir(model_dir, backend=backend, threads=threads)
    rows = min(len(test), LATENCY_BATCH)
    batch = test.take(slice(0, rows)).inputs
    singles = [test.take(slice(i, i + 1)).inputs for i in range(rows)]
    single_ms = _timed(lambda i: predictor.predict(singles[i % rows]), LATENCY_CALLS["single"])
    batch_ms = _timed(lambda i: predictor.predict(batch), LATENCY_CALLS["batch"])
    return {"backend": predictor.backend, "requested_backend": backend, "backend_note": predictor.backend_note,
            "single_p50_ms": round(statistics.median(single_ms), 3), "single_calls": len(single_ms),
            "batch_rows": rows, "batch_per_row_ms": round(statistics.median(batch_ms) / rows, 4),
            "batch_calls": len(batch_ms), "cpu": cpu_name(), "threads": threads}


def _timed(call: Callable[[int], Any], count: int, least: int = 3) -> list[float]:
    """Milliseconds of `count` calls after LATENCY_WARMUP untimed ones, fewer past LATENCY_BUDGET_S."""
    for i in range(LATENCY_WARMUP):
        call(i)
    times: list[float] = []
    deadline = time.perf_counter() + LATENCY_BUDGET_S
    for i in range(count):
        if len(times) >= least and time.perf_counter() > deadline:
            break
        start = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def cpu_name() -> str:
    """The CPU's model name as the kernel reports it, else what Python's platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# ---- markdown -----------------------------------------------------------------------------------------------

def render_card(card: dict[str, Any], max_chars: int | None = None) -> str:
    """The card as markdown; with `max_chars`, the per-class table is cut to fit (the JSON keeps every class),
    and as a last resort the text itself."""
    shown = len(card["classes"])
    while True:
        text = "\n".join(_sections(card, shown)) + "\n"
        if max_chars is None or len(text) <= max_chars:
            return text
        if shown == 0:
            return text[: max_chars - 2] + "…\n"
        shown //= 2


def _sections(card: dict[str, Any], class_rows: int) -> list[str]:
    version = f" v{card['version']}" if card.get("version") else ""
    classes = card["classes"]
    return [
        f"# {card['task']}{version}", "",
        f"Classifies {card['noun']} like those of `{card['data']['dataset']}` into {len(classes)} classes: "
        f"{', '.join(classes)}. Model family `{card['family']}`.", "",
        "## Data", "", _data_md(card["data"], card["noun"]), "",
        f"## Test metrics ({card['test']['count']:,} {card['noun']})", "", *_metrics_md(card["test"], class_rows), "",
        "## ONNX", "", _onnx_md(card["onnx"]), "",
        "## Latency", "", _latency_md(card["latency"]), "",
        "## Inputs it refuses", "", "| code | HTTP | why |", "|---|---:|---|",
        *(f"| `{r['code']}` | {r['status']} | {r['reason']} |" for r in card["refuses"]), "",
        "## How to call it", "", f"{card['call']['summary']}", "", "```bash", card["call"]["curl"], "```", "",
        "## Trained from", "", *_trained_md(card["trained_from"]),
    ]


def _data_md(data: dict[str, Any], noun: str) -> str:
    source = f" ({data['source']})" if data.get("source") else ""
    text = (f"`{data['dataset']}`{source}: {data['train']['count']:,} train / {data['test']['count']:,} "
            f"test {noun}; sha256 train `{data['train']['sha256'][:12]}`, test `{data['test']['sha256'][:12]}`")
    if data.get("dvc_md5"):
        text += f"; DVC md5 `{data['dvc_md5'][:12]}`"
    if feedback := data.get("feedback"):
        text += (f". Train includes {feedback['train_rows']:,} labelled feedback rows from served traffic "
                 f"(feedback set sha256 `{str(feedback['sha256'])[:12]}`)")
    return text + "."


def _metrics_md(test: dict[str, Any], class_rows: int) -> list[str]:
    rows = list(test["per_class"].items())
    holdout = test.get("feedback_holdout")
    lines = [f"accuracy **{test['accuracy']:.4f}**, macro F1 {test['macro_f1']:.4f}, macro precision "
             f"{test['macro_precision']:.4f}, macro recall {test['macro_recall']:.4f}"
             + (f"; on {holdout['count']:,} held-out feedback rows, accuracy {holdout['accuracy']:.4f}" if holdout
                else ""), "",
             "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']:,} |"
              for label, m in rows[:class_rows]]
    if class_rows < len(rows):
        lines.append(f"| … {len(rows) - class_rows} more classes in model_card.json | | | | |")
    return lines


def _onnx_md(onnx: dict[str, Any]) -> str:
    if onnx["status"] == "ok":
        return (f"Exported; ONNX Runtime against PyTorch on {onnx['rows']} test rows: max |logit diff| "
                f"{onnx['max_abs_logit_diff']:.2e}, argmax agreement {onnx['argmax_agreement']:.4f}.")
    if onnx["status"] == "not exported":
        return f"Not exported ({onnx['reason']}): serving runs it with torch."
    return f"Export failed its check, so serving runs it with torch: {onnx['reason']}"


def _latency_md(latency: dict[str, Any]) -> str:
    fallback = latency["backend"] != latency.get("requested_backend", latency["backend"])
    note = f" ({latency['backend_note']})" if fallback and latency.get("backend_note") else ""
    return (f"{latency['single_p50_ms']:.3g} ms per single input (median of {latency['single_calls']} calls), "
            f"{latency['batch_per_row_ms']:.3g} ms per row at batch {latency['batch_rows']}; "
            f"{latency['backend']}{note} on {latency['cpu']}, {latency['threads']} torch threads, measured at "
            "registration without HTTP.")


def _trained_md(t: dict[str, Any]) -> list[str]:
    git = f"git `{t['git_commit'][:12]}`{' (uncommitted changes)' if t['git_dirty'] else ''}" \
        if t.get("git_commit") else "no git commit recorded"
    hashes = ", ".join(f"{name} md5 `{t[key][:12]}`" for name, key in (("dataset", "dataset_md5"),
                                                                        ("prepared split", "prepared_md5")) if t.get(key))
    workers = f"{t['workers']} worker{'s' if t['workers'] != 1 else ''}" if t.get("workers") is not None else "workers ?"
    wall = f", {t['wall_time_s']:.0f} s" if t.get("wall_time_s") is not None else ""
    return [f"MLflow run `{t['run_id']}`, recipe {t['recipe'] or '(none)'}, family `{t['family']}`; {git}"
            + (f"; {hashes}" if hashes else "") + ".", "",
            f"{t['epochs']} epoch{'s' if t['epochs'] != 1 else ''}, batch {t['batch_size']}, lr {t['learning_rate']} ({t['optimizer']}), precision "
            f"{t['precision']}, engine {t['engine']} ({t['strategy']}), {workers} on {t['device'] or '?'}{wall}."]
