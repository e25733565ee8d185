"""The plain training loop's parts: the learning-rate schedule, the optimiser's parameter groups and the
shuffled batches."""

import pytest
import torch

from modelyard.training.loop import batch_indices, build_optimizer, build_scheduler


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


def test_each_parameter_group_runs_at_its_own_share_of_the_learning_rate():
    head, backbone = torch.nn.Linear(4, 2), torch.nn.Linear(4, 4)
    opt = build_optimizer([("head", list(head.parameters()), 1.0), ("backbone", list(backbone.parameters()), 0.25)],
                          lr=0.002, kind="adamw")
    assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(
        {"head": 0.002, "head/no_decay": 0.002, "backbone": 0.0005, "backbone/no_decay": 0.0005})
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([("frozen", [], 1.0)], lr=0.1)


def test_shuffled_batches_cover_each_index_once_and_drop_the_remainder():
    idx = torch.arange(103)
    batches = list(batch_indices(idx, 10, torch.Generator().manual_seed(0)))
    seen = torch.cat(batches)
    assert len(batches) == 10 and len(set(seen.tolist())) == 100
    assert sum(len(b) for b in batch_indices(idx, 10, None)) == 103  # eval keeps every index
