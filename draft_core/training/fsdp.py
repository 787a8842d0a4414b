"""The frozen base sharded across processes (FSDP2), for a denoiser that does not fit one device.

``fully_shard`` (torch.distributed.fsdp, FSDP2) wraps each of the denoiser's blocks and then the
denoiser itself: every process keeps 1/N of each frozen weight and gathers a block's weights only
while that block runs (and again in the backward pass). The LoRA's parameters are left out
(``ignored_params``): they stay plain tensors, replicated on every process, so a training loop's
gradient all-reduce, clipping, EMA, optimiser, checkpoints and LoRA file work unchanged.

``draft train`` shards under an FSDP launch (``accelerate launch --use_fsdp``, or
``ACCELERATE_USE_FSDP=true torchrun ...``): ``shard_under_fsdp``. Every forward pass of a sharded
denoiser is a collective (each unit's weights are all-gathered from every process), so every process
must run the same passes in the same order. Grids and validation used to run on the main process
only: its all-gathers then paired with another process's all-gathers of the next training step, which
in its backward pass gathers the units in reverse order, hence the earlier "collective mismatch". Under
sharding, grids and validation therefore run on every process (``RunPictures.write`` is false on the
others: they draw the same images and drop them); only the main process writes. For the same reason an
estimator whose number of denoiser passes is drawn per process (``k_range``, ``alignprop_range``,
ReFL's ``m``) is refused. And the main process alone saves the LoRA (a ``state_dict()`` call, which reshards a gathered
unit on that process only), so the root unit is resharded after every pass like the blocks, keeping
every process in the same state. ``shard_frozen_base`` also serves a loop of one's own. Tested under
``draft train`` on 2 gloo processes (tests/test_fsdp.py); NCCL on GPUs untested.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from draft_core.errors import ConfigError

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
    # FSDP2 keeps the root's own weights gathered after a forward pass (for the backward pass next), and a
    # state_dict() call (the main process saving the LoRA) reshards them on that process alone: the next pass
    # then all-gathers the root on one process only. Resharded after every pass, every process is alike.
    denoiser.set_reshard_after_forward(True, recurse=False)
    return len(blocks) + 1


def shard_under_fsdp(trainer: Any) -> bool:
    """Under an FSDP launch, shard ``trainer``'s frozen denoiser across its processes (the LoRA, which
    requires grad, stays replicated) and let every process take part in grids and validation; True
    then. Anything else (one process, plain data parallel): nothing changes, False."""
    from accelerate.utils import parse_flag_from_env

    acc = trainer.acc
    # accelerate names a GPU launch FSDP; on CPU it keeps MULTI_CPU, so its launch flag is read too.
    if acc.num_processes < 2 or not (acc.distributed_type.name == "FSDP" or parse_flag_from_env("ACCELERATE_USE_FSDP")):
        return False
    cfg = trainer.config
    est = cfg.estimator
    drawn = [k for k in ("k_range", "alignprop_range") if est.get(k) is not None]
    drawn += ["m"] if est.get("name") == "refl" and est.get("m", 20) != 1 else []  # ReFL's t, uniform in [1, m]
    if drawn:
        raise ConfigError(
            f"estimator.{drawn[0]}={est.get(drawn[0], 20)!r} draws how many denoiser passes a step makes on each process, "
            f"but under an FSDP launch every process must run the same passes (each one gathers the sharded weights "
            f"from all of them); give a fixed number (estimator.k for draft-k, m: 1 for refl), or launch without FSDP "
            f"(plain data parallel)."
        )
    if cfg.model.quantize != "none":
        raise ConfigError(
            f"model.quantize={cfg.model.quantize!r} cannot be combined with an FSDP launch here (a quantized weight "
            f"is not sharded by fully_shard); use model.quantize=none with FSDP, or one process with the quantized base."
        )
    trainable = [p for p in trainer.model.denoiser.parameters() if p.requires_grad]
    units = shard_frozen_base(trainer.model, trainable)
    trainer.pictures.write = acc.is_main_process  # the others draw the same grids (their passes are needed), unwritten
    trainer.log(
        f"FSDP: the frozen denoiser is sharded across {acc.num_processes} processes ({units} units); "
        f"the LoRA is replicated and trained data-parallel"
    )
    return True
