"""The frozen base sharded across processes (FSDP2), for a denoiser that does not fit one device.

``fully_shard`` (torch.distributed.fsdp, FSDP2) wraps each of the denoiser's blocks and then the
denoiser itself: every process keeps 1/N of each frozen weight and gathers a block's weights only
while that block runs (and again in the backward pass). The LoRA's parameters are left out
(``ignored_params``): they stay plain tensors, replicated on every process, so a training loop's
gradient all-reduce, clipping, EMA, optimiser, checkpoints and LoRA file work unchanged.

Not wired into the runner yet: under ``draft train`` with 2 gloo processes, a sample grid drawn
between training steps (a no-grad pass of the sharded denoiser after a backward pass) ended in a
collective mismatch (the two processes all-gathered different units), not diagnosed yet; the
runner therefore still trains plain data parallel under an FSDP launch, with a warning.
``shard_frozen_base`` works under a ``torch.distributed`` process group (gloo on CPU here; NCCL on
GPUs untested) for a loop of one's own (tests/test_fsdp.py: a DRaFT-1 step's LoRA gradient equals the unsharded one).
"""

from __future__ import annotations

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

