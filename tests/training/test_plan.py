"""How many Ray Train workers, and how many CPUs each, from the resources the cluster reports."""

import pytest

from modelyard.config import TrainConfig
from modelyard.training.plan import WorkerPlan, plan_workers


@pytest.mark.parametrize(
    ("train", "nodes", "workers", "cpus", "gpu"),
    [
        ({}, [{"CPU": 2}], 1, 2, False),  # one small node: one worker with every core
        ({}, [{"CPU": 16}], 1, 16, False),
        ({}, [{"CPU": 8}, {"CPU": 8}, {"CPU": 4}], 3, 4, False),  # one per node, sized by the smallest
        ({}, [{"CPU": 16, "GPU": 2}], 2, 8, True),  # one per GPU
        ({"use_gpu": "false"}, [{"CPU": 16, "GPU": 2}], 1, 16, False),
        ({"num_workers": 2}, [{"CPU": 2}], 2, 1, False),  # explicit: honoured, cores shared out
        ({"num_workers": 4}, [{"CPU": 8}, {"CPU": 8}], 4, 4, False),
        ({"num_workers": 2, "cpus_per_worker": 1}, [{"CPU": 8}], 2, 1, False),
    ],
)
def test_plan_follows_the_cluster(train, nodes, workers, cpus, gpu):
    plan = plan_workers(TrainConfig(**train), nodes)
    assert isinstance(plan, WorkerPlan)
    assert (plan.num_workers, plan.cpus_per_worker, plan.use_gpu) == (workers, cpus, gpu)
    assert plan.reason


@pytest.mark.parametrize(
    ("train", "nodes", "needle"),
    [
        ({"num_workers": 4, "cpus_per_worker": 2}, [{"CPU": 2}], "needs 8 CPUs"),
        ({"use_gpu": "true"}, [{"CPU": 2}], "0 GPU"),
        ({}, [{"CPU": 0, "GPU": 0}], "no node with a CPU"),
    ],
)
def test_impossible_plans_are_refused_with_the_numbers(train, nodes, needle):
    with pytest.raises(ValueError, match=needle):
        plan_workers(TrainConfig(**train), nodes)
