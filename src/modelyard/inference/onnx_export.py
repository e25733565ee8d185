"""ONNX export of a saved model and its parity check against PyTorch on real rows.

The exported graph is the Predictor's: what the model's preprocessor feeds (uint8 images with the fitted
preprocessing inside the graph, a text batch's `input_ids` and `attention_mask`, a series batch's values and
mask), with the preprocessor's dynamic axes (batch, and length where inputs vary in it). The export goes next
to the weights as `model.onnx`, with `onnx.json` holding the parity check, so a registered model version
carries both.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelyard.inference.onnx_runtime import ONNX_FILE, REPORT_FILE, session
from modelyard.inference.predictor import Predictor

log = logging.getLogger(__name__)

# The parity a served ONNX model must show on the check batch to be used instead of torch.
MAX_ABS_LOGIT_DIFF = 1e-3
OPSET = 17


def export_and_check(model_dir: str | Path, sample: Any, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Export the model in `model_dir` to `out_dir/model.onnx` (default: beside it) and compare ONNX Runtime
    with PyTorch on `sample` (real test inputs). Never raises for a model that cannot be exported: the report
    says why (`status: failed`), and serving then stays on torch."""
    out_dir = Path(out_dir or model_dir)
    report: dict[str, Any] = {"status": "failed", "exporter": "torchscript", "opset": OPSET}
    start = time.perf_counter()
    try:
        predictor = Predictor.from_dir(model_dir)
        pre = predictor.preprocessor
        _, feeds = next(iter(pre.feeds(pre.check_batch(sample), batch_size=len(sample))))
        names = list(feeds)
        with torch.inference_mode(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            # The TorchScript exporter: far quicker than the torch.export one for the same graph and parity,
            # and it runs at every registration.
            # With the projected penultimate embedding as a second output where the model has a classifier head
            # (the traffic log and drift read it); the logits stay the first.
            graph = predictor.embedding_graph or predictor.graph
            outputs = ["logits", "embedding"] if predictor.embedding_graph is not None else ["logits"]
            torch.onnx.export(graph, tuple(feeds.values()), str(out_dir / ONNX_FILE), dynamo=False,
                              input_names=names, output_names=outputs,
                              dynamic_axes={**pre.dynamic_axes, **{o: {0: "batch"} for o in outputs}},
                              opset_version=OPSET)
        report["export_s"] = round(time.perf_counter() - start, 3)
        report |= _parity(predictor, feeds, out_dir / ONNX_FILE)
    except Exception as exc:  # any exporter or runtime failure is reported, not raised
        report["reason"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        (out_dir / ONNX_FILE).unlink(missing_ok=True)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    log.info("ONNX export of %s: %s", model_dir, report)
    return report


def _parity(predictor: Predictor, feeds: dict[str, torch.Tensor], onnx_path: Path) -> dict[str, Any]:
    with torch.inference_mode():
        expected = predictor.graph(**feeds).float().numpy()
    got = session(onnx_path).run(["logits"], {k: v.numpy() for k, v in feeds.items()})[0]
    diff = float(np.abs(got - expected).max())
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    out: dict[str, Any] = {"rows": len(expected), "max_abs_logit_diff": diff, "argmax_agreement": agree}
    if diff <= MAX_ABS_LOGIT_DIFF and agree == 1.0:
        out["status"] = "ok"
    else:
        out["reason"] = (f"ONNX Runtime differs from PyTorch on {len(expected)} test rows: max |logit diff| "
                         f"{diff:.2e} (limit {MAX_ABS_LOGIT_DIFF:.0e}), argmax agreement {agree:.4f}")
    return out
