"""Which precision a step computes in: chosen from what the hardware does natively, refused where it cannot run,
and carried out by autocast."""

import pytest
import torch

from modelyard.training import precision
from modelyard.training.precision import Precision, resolve_precision

CPU = torch.device("cpu")


def test_fp16_on_cpu_is_refused_with_a_pointer_to_bf16():
    with pytest.raises(ValueError, match="bf16"):
        Precision(device=CPU, mode="fp16")


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="none, bf16 or fp16"):
        Precision(device=CPU, mode="auto")  # `auto` must be resolved first


def test_bf16_autocast_on_cpu_computes_in_bf16():
    with Precision(device=CPU, mode="bf16").autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    with Precision(device=CPU, mode="none").autocast():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


def test_channels_last_formats_image_batches_only():
    fmt = Precision(device=CPU, channels_last=True).format
    assert fmt(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    assert not Precision(device=CPU).format(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    ids = {"input_ids": torch.zeros(2, 5, dtype=torch.long)}
    assert fmt(ids) is ids  # a text batch passes through untouched


@pytest.mark.parametrize(
    ("native", "mode", "expected"),
    [("AVX512_BF16", "auto", "bf16"), ("AMX", "auto", "bf16"), (None, "auto", "none"),
     (None, "none", "none"), ("AMX", "none", "none"), (None, "bf16", "bf16")],
)
def test_auto_precision_follows_the_cpus_native_bf16(monkeypatch, native, mode, expected):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: native)
    chosen, why = resolve_precision(mode, CPU)
    assert chosen == expected and why


def test_bf16_on_a_cpu_that_emulates_it_runs_with_a_warning_that_says_how_slow(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: None)
    with caplog.at_level("WARNING", logger="modelyard.training.precision"):
        assert resolve_precision("bf16", CPU)[0] == "bf16"
    assert "emulated" in caplog.text and "slower than in fp32" in caplog.text


def test_fp16_on_cpu_is_refused_when_resolving():
    with pytest.raises(ValueError, match="CUDA"):
        resolve_precision("fp16", CPU)


def test_this_machines_cpu_is_probed_consistently_with_the_kernels_flags():
    flags = precision._cpuinfo_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo on this OS")
    expected = "AMX" if "amx_bf16" in flags else "AVX512_BF16" if "avx512_bf16" in flags else None
    assert precision.cpu_bf16_support() == expected
