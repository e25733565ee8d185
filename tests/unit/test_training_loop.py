import pytest
import torch

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
