"""Running a model's ONNX export with ONNX Runtime, and whether a saved model has an export fit to run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ONNX_FILE = "model.onnx"
REPORT_FILE = "onnx.json"


def session(path: str | Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def usable(model_dir: str | Path) -> tuple[bool, str]:
    """Whether `model_dir` holds an ONNX export that passed its parity check, and if not, why."""
    report_path = Path(model_dir) / REPORT_FILE
    if not report_path.exists():
        return False, "the model version was registered without an ONNX export"
    report = json.loads(report_path.read_text())
    if report.get("status") != "ok" or not (Path(model_dir) / ONNX_FILE).exists():
        return False, f"its ONNX export failed at registration: {report.get('reason', 'unknown')}"
    return True, (f"parity at registration: max |logit diff| {report['max_abs_logit_diff']:.1e}, "
                  f"argmax agreement {report['argmax_agreement']:.4f} on {report['rows']} test rows")
