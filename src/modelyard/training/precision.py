"""Which precision a step computes in, chosen from what the hardware does natively, and the autocast and
GradScaler that carry it out."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_bf16_support() -> str | None:
    """The native bf16 instruction set of this CPU ("AMX" or "AVX512_BF16"), or None when bf16 is emulated.

    Uses torch's own probes where the build has them, else the flags the kernel reports in /proc/cpuinfo.
    """
    cpu = getattr(torch._C, "_cpu", None)
    amx = getattr(cpu, "_is_amx_tile_supported", None)
    avx512_bf16 = getattr(cpu, "_is_avx512_bf16_supported", None)
    if amx is not None and avx512_bf16 is not None:
        return "AMX" if amx() else "AVX512_BF16" if avx512_bf16() else None
    flags = _cpuinfo_flags()
    if "amx_bf16" in flags:
        return "AMX"
    return "AVX512_BF16" if "avx512_bf16" in flags else None


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def resolve_precision(mode: str, device: torch.device) -> tuple[str, str]:
    """The precision a step will use on `device` for the configured `mode`, and why.

    `auto` picks bf16 where the hardware computes it natively (a GPU with bf16, a CPU with AVX512_BF16 or
    AMX) and fp32 ("none") elsewhere. An explicit bf16 on a CPU that emulates it is honoured, with a warning.
    """
    if device.type == "cuda":
        if mode == "auto":
            if torch.cuda.is_bf16_supported():
                return "bf16", f"{torch.cuda.get_device_name(device)} supports bf16"
            return "none", f"{torch.cuda.get_device_name(device)} has no bf16; fp32"
        return mode, "as configured"
    if mode == "fp16":
        raise ValueError("mixed_precision=fp16 needs a CUDA device; use auto, bf16 or none on CPU")
    native = cpu_bf16_support()
    if mode == "auto":
        if native:
            return "bf16", f"CPU has native bf16 ({native})"
        return "none", "CPU has no native bf16 (no AVX512_BF16 or AMX); fp32"
    if mode == "bf16" and not native:
        log.warning(
            "train.mixed_precision=bf16 on a CPU without native bf16 (no AVX512_BF16 or AMX): bf16 is emulated "
            "and a step runs many times slower than in fp32 (the README gives a measurement); set "
            "train.mixed_precision=auto or none"
        )
        return "bf16", "as configured (emulated on this CPU: slow)"
    return mode, "as configured"


@dataclass
class Precision:
    """How a step computes: autocast dtype (or none), and a GradScaler for fp16."""

    device: torch.device
    mode: str = "none"  # none | bf16 | fp16 (resolve "auto" with `resolve_precision` first)
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("none", *AMP_DTYPES):
            raise ValueError(f"precision mode must be none, bf16 or fp16, got {self.mode!r}")
        if self.mode == "fp16" and self.device.type != "cuda":
            raise ValueError("mixed_precision=fp16 needs a CUDA device; use auto, bf16 or none on CPU")
        self.scaler = torch.amp.GradScaler("cuda") if self.mode == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.mode == "none":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.mode])

    def format(self, x: Any) -> Any:
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x
