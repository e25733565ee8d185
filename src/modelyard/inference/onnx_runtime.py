"""Running a model's ONNX export with ONNX Runtime, and whether a saved model has an export fit to run."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

ONNX_FILE = "model.onnx"
REPORT_FILE = "onnx.json"


TENSORRT = "TensorrtExecutionProvider"
# TensorRT first, CUDA for the nodes TensorRT does not take, the CPU for the rest (ONNX Runtime's own order).
# TensorRT builds an engine per input shape range; the cache keeps them across replica starts.
TENSORRT_CACHE = os.environ.get("MODELYARD_TENSORRT_CACHE",
                                os.path.join(tempfile.gettempdir(), "modelyard-tensorrt-engines"))
TENSORRT_PROVIDERS: list[Any] = [
    (TENSORRT, {"trt_engine_cache_enable": True, "trt_engine_cache_path": TENSORRT_CACHE, "trt_fp16_enable": False}),
    "CUDAExecutionProvider", "CPUExecutionProvider"]


def session(path: str | Path, threads: int | None = None, providers: list[Any] | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def tensorrt_session(path: str | Path, threads: int | None = None) -> tuple[Any, str | None]:
    """A session on ONNX Runtime's TensorRT execution provider, or (a CPU session, why TensorRT is not running).
    TensorRT needs onnxruntime-gpu built with it, its libraries, and a CUDA GPU; ONNX Runtime drops a provider it
    cannot start with a warning only, so the providers the session really got are checked."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if TENSORRT not in available:
        return session(path, threads), (f"TensorRT is unavailable: this onnxruntime {ort.__version__} offers "
                                        f"{', '.join(available)} (TensorRT needs onnxruntime-gpu with TensorRT "
                                        "and a CUDA GPU)")
    try:
        trt = session(path, threads, TENSORRT_PROVIDERS)
    except Exception as err:  # noqa: BLE001 (libnvinfer missing, no device: say it, serve on)
        return session(path, threads), f"TensorRT failed to start: {type(err).__name__}: {err}"
    if TENSORRT not in trt.get_providers():
        return session(path, threads), f"TensorRT did not start (the session got {', '.join(trt.get_providers())})"
    return trt, None


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
