"""FSDP for the torch engine: FSDP2's `fully_shard`, and the consolidated state dicts checkpoints hold.

Ray Train's `prepare_model(parallel_strategy="fsdp")` wraps in FSDP1 and refuses CPUs; FSDP2 shards on CPU
workers too (gloo), which is what the tests run on. Units are sharded bottom-up: each element of a
`ModuleList` (a Transformer's layers), then each top-level child with parameters (containers without a
forward of their own are left to their elements), then the root; a unit's parameters are gathered only while
it runs. Buffers are not sharded and, unlike DDP's, not broadcast: each rank keeps its own batch-norm
running statistics, and the checkpoint holds rank 0's.

Checkpoints hold the full, unsharded state (gathered to rank 0 on CPU): evaluation, registration and the
ONNX export read the same files as after DDP. Every rank must call `full_model_state` and
`full_optimizer_state` (they are collectives); only rank 0 gets the tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def shard(model: nn.Module) -> nn.Module:
    """Shard `model` in place over the default process group (on its own device) and return it."""
    from torch.distributed.fsdp import fully_shard

    done: set[int] = set()

    def unit(module: nn.Module) -> None:
        if id(module) not in done and any(p.requires_grad for p in module.parameters()):
            fully_shard(module)
            done.add(id(module))

    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for layer in module:
                unit(layer)
    for child in model.children():
        if not isinstance(child, (nn.ModuleList, nn.ModuleDict)):  # fully_shard wants a module with a forward
            unit(child)
    fully_shard(model)  # the root always: it owns what no unit took
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on rank 0's CPU ({} on other ranks). A collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's unsharded state, keyed by parameter name, on rank 0 ({} elsewhere). A collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict[str, Any] | None,
                    optimizer_state: dict[str, Any] | None = None) -> None:
    """Load full (unsharded) states, which every rank holds, into the sharded model and its optimiser."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    if model_state is not None:
        set_model_state_dict(model, model_state, options=_options())
    if optimizer is not None and optimizer_state is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=_options())
