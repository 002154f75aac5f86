"""Fully sharded data parallel for the frozen UNet (PyTorch FSDP2, ``torch.distributed.fsdp.fully_shard``).

Only the LoRA trains, so what sharding saves is the frozen base weights θ0: every rank keeps 1/N
of each UNet block and all-gathers a block just before it runs (each sampling step, the reference
pass with adapters off, and the recomputation of checkpointed steps in backward), then frees it
again. FSDP reduce-scatters the LoRA gradients itself (sum, then divide by N: the same rounding as the
trainer's all-reduce on the replicated path), so that all-reduce is skipped.

FSDP's all-gathers are collectives: every rank must run the UNet the same number of times. The
trainer keeps ranks in step where work is data dependent (reference-cache misses, sample grids).

Parameters become ``DTensor``s holding the local shard; :func:`full` gathers one (a collective, so
every rank calls it) and :func:`shard_like` cuts a full tensor read from a checkpoint into the
local shard of a parameter.
"""
from __future__ import annotations

import torch

# The wrap units: each is sharded separately, so at most one of them is gathered at a time (plus the
# root's own small layers: conv_in/out, time embedding, down/upsamplers, transformer in/out projections).
WRAP_CLASSES = ("ResnetBlock2D", "BasicTransformerBlock",  # UNets
                "JointTransformerBlock",  # SD3/3.5 (MMDiT)
                "FluxTransformerBlock", "FluxSingleTransformerBlock")  # FLUX.1 double- and single-stream blocks


def shard_unet(unet: torch.nn.Module, device: torch.device, world_size: int, reshard_after_forward: bool = True) -> int:
    """Shard ``unet`` in place over ``world_size`` ranks (LoRA already attached); return the number of wrap units.

    Call it before creating the optimizer: the parameters are replaced by sharded ones."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    units = [m for m in unet.modules() if type(m).__name__ in WRAP_CLASSES]
    for module in (*units, unet):  # the units never nest; the root comes last
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
        module.set_force_sum_reduction_for_comms(True)  # sum, then divide by N: rounds as the replicated path does
    return len(units)


def reshard_after_forward(fsdp_plugin) -> bool:
    """What an accelerate FSDP config asks for: False for ``fsdp_reshard_after_forward: false`` (FSDP2)
    or the FSDP1 strategies that keep gathered weights (SHARD_GRAD_OP, NO_SHARD); True otherwise."""
    value = str(getattr(fsdp_plugin, "reshard_after_forward", True)).rsplit(".", 1)[-1]
    return value not in ("False", "false", "SHARD_GRAD_OP", "NO_SHARD")


def is_sharded(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathered over ranks if sharded; every rank must call it)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part (the tensor itself if not sharded)."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def shard_like(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor every rank holds, e.g. read from a checkpoint) laid out like ``param``."""
    value = value.to(param.device, param.dtype)
    if not is_sharded(param):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)  # no communication
