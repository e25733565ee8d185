"""How many Ray Train workers a run gets and what each reserves, from the cluster's alive nodes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelyard.config import TrainConfig


@dataclass(frozen=True)
class WorkerPlan:
    """How many Ray Train workers, what each reserves, and why."""

    num_workers: int
    cpus_per_worker: int
    use_gpu: bool
    reason: str


def plan_workers(tc: TrainConfig, nodes: list[dict[str, float]]) -> WorkerPlan:
    """Choose workers x CPUs from the resources of the cluster's alive nodes (`[{"CPU": 2, "GPU": 0}, ...]`).

    GPUs: one worker per GPU. CPUs only: one worker per node using every core of it: one process per node
    holds the data once and needs no gradient all-reduce within the node (`make bench` compares the two).
    Explicit `num_workers` / `cpus_per_worker` are honoured and checked against what the cluster has.
    """
    cpu_nodes = [n for n in nodes if n.get("CPU", 0) >= 1]
    if not cpu_nodes:
        raise ValueError("the Ray cluster has no node with a CPU to train on")
    gpus = sum(int(n.get("GPU", 0)) for n in nodes)
    total_cpus = sum(int(n["CPU"]) for n in cpu_nodes)
    wanted = tc.num_workers if isinstance(tc.num_workers, int) else None
    if tc.use_gpu == "true" and gpus < (wanted or 1):
        raise ValueError(f"train.use_gpu=true but the cluster has {gpus} GPU(s) for {wanted or 1} worker(s)")
    use_gpu = tc.use_gpu == "true" or (tc.use_gpu == "auto" and gpus >= max(wanted or 1, 1))
    if use_gpu:
        workers = wanted or gpus
        gpu_nodes = [n for n in cpu_nodes if n.get("GPU", 0) >= 1] or cpu_nodes
        per_node = min(int(n["CPU"]) // max(int(n.get("GPU", 1)), 1) for n in gpu_nodes)
        reason = f"{workers} worker(s), one per GPU ({gpus} in the cluster)"
    else:
        workers = wanted or len(cpu_nodes)
        per_node = min(int(n["CPU"]) for n in cpu_nodes) // max(1, math.ceil(workers / len(cpu_nodes)))
        reason = (f"{workers} CPU worker(s) over {len(cpu_nodes)} node(s) with {total_cpus} CPU(s)"
                  + ("" if wanted else ", one per node using all its cores"))
    cpus = tc.cpus_per_worker if isinstance(tc.cpus_per_worker, int) else max(1, per_node)
    if workers * cpus > total_cpus:
        raise ValueError(
            f"train.num_workers={workers} x cpus_per_worker={cpus} needs {workers * cpus} CPUs, but the cluster "
            f"has {total_cpus}; lower them or set both to auto"
        )
    return WorkerPlan(workers, cpus, use_gpu, f"{reason}; {cpus} CPU(s) each")
