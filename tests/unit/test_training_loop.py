import pytest
import torch

from modelyard.training import loop
from modelyard.training.loop import Precision, batch_indices, build_optimizer, build_scheduler


def test_fp16_on_cpu_is_refused_with_a_pointer_to_bf16():
    with pytest.raises(ValueError, match="bf16"):
        Precision(device=torch.device("cpu"), mode="fp16")


def test_bf16_autocast_on_cpu_computes_in_bf16():
    with Precision(device=torch.device("cpu"), mode="bf16").autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16


def test_schedule_warms_up_then_decays_to_zero():
    opt = build_optimizer(torch.nn.Linear(2, 2), lr=0.1, momentum=0.9, weight_decay=0.0)
    sched = build_scheduler(opt, total_steps=100, warmup_steps=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.001


def test_no_weight_decay_on_norm_and_bias():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    decay, no_decay = build_optimizer(model, 0.1, 0.9, 5e-4).param_groups
    assert decay["weight_decay"] == 5e-4 and len(decay["params"]) == 1
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3


def test_shuffled_batches_cover_each_index_once_and_drop_the_remainder():
    idx = torch.arange(103)
    batches = list(batch_indices(idx, 10, torch.Generator().manual_seed(0)))
    seen = torch.cat(batches)
    assert len(batches) == 10 and len(set(seen.tolist())) == 100
    assert sum(len(b) for b in batch_indices(idx, 10, None)) == 103  # eval keeps every index


@pytest.mark.parametrize(
    ("native", "mode", "expected"),
    [("AVX512_BF16", "auto", "bf16"), ("AMX", "auto", "bf16"), (None, "auto", "none"),
     (None, "none", "none"), ("AMX", "none", "none"), (None, "bf16", "bf16")],
)
def test_auto_precision_follows_the_cpus_native_bf16(monkeypatch, native, mode, expected):
    monkeypatch.setattr(loop, "cpu_bf16_support", lambda: native)
    chosen, why = loop.resolve_precision(mode, torch.device("cpu"))
    assert chosen == expected and why


def test_bf16_on_a_cpu_that_emulates_it_runs_with_a_warning_that_says_how_slow(monkeypatch, caplog):
    monkeypatch.setattr(loop, "cpu_bf16_support", lambda: None)
    with caplog.at_level("WARNING", logger="modelyard.training.loop"):
        assert loop.resolve_precision("bf16", torch.device("cpu"))[0] == "bf16"
    assert "emulated" in caplog.text and "13x slower than fp32" in caplog.text


def test_fp16_on_cpu_is_refused_when_resolving():
    with pytest.raises(ValueError, match="CUDA"):
        loop.resolve_precision("fp16", torch.device("cpu"))


def test_this_machines_cpu_is_probed_consistently_with_the_kernels_flags():
    flags = loop._cpuinfo_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo on this OS")
    expected = "AMX" if "amx_bf16" in flags else "AVX512_BF16" if "avx512_bf16" in flags else None
    assert loop.cpu_bf16_support() == expected
