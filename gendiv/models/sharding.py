"""FSDP2 sharding of a denoiser's network (``torch.distributed.fsdp.fully_shard``): every block of the UNet or
transformer is one sharding unit (its weights are gathered for its own forward and backward only, then freed), and
the whole denoiser is the root unit. Frozen weights (a teacher, or the base under LoRA adapters) are sharded like
trained ones, so each process holds 1/world of every network.

Shard before making :class:`~gendiv.models.lora.AdapterView` s (views collect their adapter's parameters, which
sharding replaces by distributed tensors). Works on CPU with the gloo backend (tests/test_sharding.py) and on CUDA
with NCCL.
"""
from __future__ import annotations

from torch import nn

from ..errors import InputError
from .lora import base_network


def network_blocks(net: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a diffusers UNet (down, mid, up blocks) or transformer (its transformer blocks)."""
    blocks = []
    for name in ("down_blocks", "up_blocks", "transformer_blocks", "single_transformer_blocks"):
        blocks += list(getattr(net, name, None) or [])
    if getattr(net, "mid_block", None) is not None:
        blocks.append(net.mid_block)
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
