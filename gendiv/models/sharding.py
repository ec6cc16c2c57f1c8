"""FSDP2 sharding of a denoiser's network (``torch.distributed.fsdp.fully_shard``): every block of the UNet or
transformer is one sharding unit (its weights are gathered for its own forward and backward only, then freed), and
the whole denoiser is the root unit. Frozen weights (a teacher, or the base under LoRA adapters) are sharded like
trained ones, so each process holds 1/world of every network.

Shard before making :class:`~gendiv.models.lora.AdapterView` s (views collect their adapter's parameters, which
sharding replaces by distributed tensors). Works on CPU with the gloo backend (tests/test_sharding.py) and on CUDA
with NCCL. The trainer's ``memory.fsdp`` uses it (gendiv/training/fsdp.py); accelerate's own FSDP plugin is not used
because it applies only on GPUs (on CPU processes it falls back to DDP) and prepares one network with one optimiser
at a time, which leaves no way for a frozen teacher or LoRA adapters sharing one base.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import InputError
from .lora import base_network


def _blocks(net: nn.Module) -> list[nn.Module]:
    blocks = []
    for name in ("down_blocks", "up_blocks", "transformer_blocks", "single_transformer_blocks"):
        blocks += list(getattr(net, name, None) or [])
    if getattr(net, "mid_block", None) is not None:
        blocks.append(net.mid_block)
    return blocks


def network_blocks(net: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a diffusers UNet (down, mid, up blocks) or transformer (its transformer blocks)."""
    blocks = _blocks(net)
    if not blocks:
        raise InputError(f"{type(net).__name__} has no down/up/mid or transformer blocks to shard")
    return blocks


def shard_denoiser(denoiser: nn.Module, mesh=None, reshard_after_forward: bool = True) -> nn.Module:
    """``denoiser`` with FSDP2 applied per block and at the root (in place; returned for chaining). ``mesh``: a 1-D
    device mesh (default: all processes of the default group)."""
    from torch.distributed.fsdp import fully_shard

    for block in network_blocks(base_network(denoiser)):
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(denoiser, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return denoiser


def _diffusers_network(net: nn.Module) -> nn.Module | None:
    """The UNet/transformer inside a denoiser or a one-step generator around one; None for heads and MLPs."""
    inner = getattr(net, "backbone", net)
    found = getattr(inner, "unet", None)
    found = getattr(inner, "net", None) if found is None else found
    return found if hasattr(found, "enable_gradient_checkpointing") else None


def shard_network(net: nn.Module, mesh=None) -> nn.Module:
    """Any network in place: a denoiser (or a one-step generator around one) per block, a small head (a
    discriminator, an MLP) as one unit."""
    from torch.distributed.fsdp import fully_shard

    inner = _diffusers_network(net)
    for block in _blocks(inner) if inner is not None else []:
        fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh)
    return net


def reshard(module: nn.Module) -> None:
    """Free every gathered weight of a sharded ``module``. FSDP2 keeps a root unit's weights gathered from its forward
    until its backward, and a gathered weight keeps the trainability (``requires_grad``) it was gathered with: a
    network that ran frozen, with no backward through it, would stay frozen in its next update unless resharded."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def enable_gradient_checkpointing(net: nn.Module) -> None:
    """diffusers' gradient checkpointing on the UNet/transformer of ``net`` (nothing to do for small heads)."""
    inner = _diffusers_network(net)
    if inner is not None:
        inner.enable_gradient_checkpointing()


def is_sharded(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_state_dict(module: nn.Module, keep: bool = True) -> dict:
    """``module.state_dict()`` with every sharded tensor gathered whole (a collective: call it on every process;
    ``keep=False`` on the processes that only take part). Unsharded modules give their plain state."""
    state = {}
    for key, value in module.state_dict().items():
        value = value.full_tensor() if is_sharded(value) else value
        if keep:
            state[key] = value.detach().contiguous().cpu()
    return state


@torch.no_grad()
def load_full_state_dict(module: nn.Module, state: dict) -> None:
    """The inverse of :func:`full_state_dict` (every process holds ``state`` whole and keeps its own shard of it)."""
    from torch.distributed.tensor import distribute_tensor

    own = module.state_dict()
    missing = sorted(set(own) ^ set(state))
    if missing:
        raise KeyError(f"state does not fit the module (first differing key: {missing[0]})")
    for key, target in own.items():
        value = state[key].to(target.dtype)
        if is_sharded(target):
            shard = distribute_tensor(value.to(target.device), target.device_mesh, target.placements, src_data_rank=None)
            target.to_local().copy_(shard.to_local())
        else:
            target.copy_(value)


class Skeleton:
    """A weightless (meta-device) unsharded copy of a module, made before sharding it: ``whole(state)`` rebuilds the
    whole module from :func:`full_state_dict`, e.g. to export a sharded student."""

    def __init__(self, module: nn.Module):
        persistent = set(module.state_dict())
        self.unsaved = {n: b.detach().clone() for n, b in module.named_buffers() if n not in persistent}
        self.meta = copy.deepcopy(module).to("meta")

    def whole(self, state: dict, device="cpu") -> nn.Module:
        module = copy.deepcopy(self.meta).to_empty(device=device)
        module.load_state_dict(state)
        with torch.no_grad():
            for name, buffer in self.unsaved.items():
                module.get_buffer(name).copy_(buffer)
        return module
