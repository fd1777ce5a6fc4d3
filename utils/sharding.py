"""Sharded data parallelism with FSDP2 (``torch.distributed.fsdp.fully_shard``), and
the full state dicts through which a sharded and an unsharded run share one
checkpoint format.

Under DDP every process holds the whole model, its gradients and its optimizer state.
``fully_shard`` turns each parameter into a ``DTensor`` of which every process keeps one
slice (dimension 0 split over the processes), gathers a layer group's parameters just
before its forward and backward pass and frees them after, and reduce-scatters the
gradients, so each process ends a step with the gradient of its own slice and updates
only that slice. The step is the same; the memory per process is about 1/N of it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

#: Whole tensors, on the CPU, on rank 0 (the others get empty dicts): what a
#: checkpoint holds, the same for a sharded and an unsharded model.
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place over the default process group: one FSDP group per
    child module that has parameters (gathered for its own forward and backward pass
    only), then the root for what is left. Returns the model (``fully_shard`` changes
    its class, not its interface)."""
    for child in model.children():
        if any(p.requires_grad for p in child.parameters()):
            fully_shard(child)
    fully_shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are DTensors (sharded by :func:`shard`)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this process holds: its slice of a DTensor, or the
    tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """The bytes this process holds between steps for the parameters, their gradients
    and the optimizer's state (Adam: two moments per weight); the parameters FSDP
    gathers for a moment during the forward and backward pass are not counted."""

    def size(tensors) -> int:
        return sum(local(t).numel() * t.element_size() for t in tensors)

    params = list(model.parameters())
    state = [
        value
        for per_param in optimizer.state.values()
        for value in per_param.values()
        if isinstance(value, torch.Tensor) and value.dim() > 0
    ]
    return {
        "parameters": size(params),
        "gradients": size(p.grad for p in params if p.grad is not None),
        "optimizer_state": size(state),
    }


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0 (empty elsewhere), sharded or not; call
    it on every rank (a sharded model gathers its slices)."""
    return get_model_state_dict(model, options=_FULL)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's whole state on rank 0 (empty elsewhere), keyed by parameter
    name, sharded or not; call it on every rank."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict (as :func:`model_state` gives it) into ``model``; each
    process keeps its own slice where the model is sharded."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load an optimizer state (as :func:`optimizer_state` gives it)."""
    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )
