"""The frozen base sharded across processes (FSDP2), for a denoiser that does not fit one device.

``fully_shard`` (torch.distributed.fsdp, FSDP2) wraps each of the denoiser's blocks and then the
denoiser itself: every process keeps 1/N of each frozen weight and gathers a block's weights only
while that block runs (and again in the backward pass). The LoRA's parameters are left out
(``ignored_params``): they stay plain tensors, replicated on every process, so the runner's
gradient all-reduce, clipping, EMA, optimiser, checkpoints and LoRA file work unchanged.

The runner shards when accelerate is set up for FSDP (``accelerate launch --use_fsdp ...``, README
"Training on several GPUs"); ``shard_frozen_base`` is also usable on its own under any
``torch.distributed`` process group (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch

#: attributes holding a denoiser's repeated blocks (transformers: SD3, FLUX; UNets: SD, SDXL).
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "down_blocks", "up_blocks")


def denoiser_blocks(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The denoiser's blocks, in order: each is one FSDP unit (its weights gathered together)."""
    blocks: list[torch.nn.Module] = []
    for name in BLOCK_LISTS:
        blocks += list(getattr(denoiser, name, None) or [])
    mid = getattr(denoiser, "mid_block", None)
    if isinstance(mid, torch.nn.Module):
        blocks.append(mid)
    return blocks


def shard_frozen_base(model: Any, trainable: Iterable[torch.nn.Parameter], device_type: str | None = None) -> int:
    """Shard ``model``'s denoiser over the default process group's processes, leaving ``trainable``
    (the LoRA) replicated. Returns the number of FSDP units (the blocks, plus the denoiser's rest)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    denoiser = model.denoiser
    mesh = init_device_mesh(device_type or model.device.type, (dist.get_world_size(),))
    ignored = set(trainable)
    blocks = denoiser_blocks(denoiser)
    for block in blocks:
        fully_shard(block, mesh=mesh, ignored_params=ignored)
    fully_shard(denoiser, mesh=mesh, ignored_params=ignored)
    return len(blocks) + 1


def wants_sharding(acc: Any) -> bool:
    """Whether the run was launched for FSDP with more than one process: accelerate set up for it, or
    ``accelerate launch --use_fsdp`` (``ACCELERATE_USE_FSDP``) on CPU processes, where accelerate
    itself leaves FSDP to GPUs and reports plain multi-CPU data parallel."""
    launched = os.environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in ("1", "true")
    return bool(acc.num_processes > 1 and (acc.distributed_type.name == "FSDP" or launched))
