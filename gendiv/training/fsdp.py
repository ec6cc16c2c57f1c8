"""``memory.fsdp``: the distillation trainer's networks sharded over the processes with PyTorch's FSDP2
(gendiv/models/sharding.py), and their checkpoints.

Each process holds 1/world of every trained network, of the EMA and of the frozen teacher; gradients are averaged
by FSDP's reduce-scatter (as DDP's all-reduce would). Networks and their optimiser states are written as sharded
checkpoints with ``torch.distributed.checkpoint`` (each process writes its own shards) from accelerate's
save/load hooks, so ``accelerator.save_state`` / ``load_state`` stay the one checkpoint call; the EMA is written
whole (gendiv/training/loop.py), and the exported student is the whole, unsharded model.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import ConfigError

SHARDED_FOLDER = "sharded"  # inside accelerate's checkpoint folder


def check_can_shard(mixed_precision: str):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("memory.fsdp shards the networks over processes: launch with `accelerate launch "
                          "--num_processes N` or `torchrun --nproc_per_node N` (this is one process)")
    if mixed_precision == "fp16":
        raise ConfigError("memory.fsdp with run.mixed_precision=fp16 is not supported (its loss scaler needs "
                          "accelerate-prepared optimisers); use bf16")


def refuse_accelerate_fsdp(accelerator):
    """``accelerate launch --use_fsdp`` (GPUs) would hand every network to accelerate's FSDP plugin, which prepares
    one network with one optimiser per call: the distillation trainer shards with ``memory.fsdp`` instead."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError("accelerate's FSDP plugin (accelerate launch --use_fsdp, or an accelerate config with FSDP) "
                          "is not how gendiv distill shards: launch without it and set memory.fsdp=true")


class ShardedCheckpoint:
    """Writes and reads ``networks`` (name → module with sharded parameters) with their ``optimizers`` (name →
    optimiser) whenever accelerate saves or loads its state."""

    def __init__(self, accelerator, networks: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]):
        self.networks, self.optimizers = networks, optimizers
        accelerator.register_save_state_pre_hook(lambda models, weights, folder: self.save(folder))
        accelerator.register_load_state_pre_hook(lambda models, folder: self.load(folder))

    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state = {}
        for name, net in self.networks.items():
            state[f"{name}.model"] = get_model_state_dict(net)
            if name in self.optimizers:
                state[f"{name}.optimizer"] = get_optimizer_state_dict(net, self.optimizers[name])
        return state

    def save(self, folder):
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=str(Path(folder) / SHARDED_FOLDER))

    def load(self, folder):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        state = self._state()
        dcp.load(state, checkpoint_id=str(Path(folder) / SHARDED_FOLDER))
        for name, net in self.networks.items():
            set_model_state_dict(net, state[f"{name}.model"])
            if name in self.optimizers:
                set_optimizer_state_dict(net, self.optimizers[name], state[f"{name}.optimizer"])
