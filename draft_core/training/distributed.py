"""What a training step needs from the processes of a data-parallel run: the launch checked, RNG
state to checkpoint and restore, gradients averaged in one all-reduce, and agreement on whether any
process saw a flag."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from draft_core.errors import ConfigError

T = TypeVar("T")


def on_cpu(device: str) -> bool:
    """Whether ``model.device`` = ``device`` trains on the CPU; a CUDA device on a machine without one is refused."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device is {device!r}, but this machine has no CUDA GPU; use auto or cpu.")
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def check_launch(acc: Any, batch_size: int, log: Callable[[str], None]) -> int:
    """The number of processes, once the global batch is known to split evenly over them (and a
    warning logged for an accelerate backend draft does not use)."""
    n: int = acc.num_processes
    if acc.distributed_type.name in ("DEEPSPEED", "MEGATRON_LM"):
        log(
            f"warning: accelerate is set up for {acc.distributed_type.name}, but draft does not use it: each process "
            f"holds the whole frozen base and the LoRA is trained data-parallel (docs/training.md: several GPUs; "
            f"for a sharded base, launch with accelerate's FSDP flag)"
        )
    if batch_size % n:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch, split evenly over the {n} "
            f"processes; give a multiple of {n}."
        )
    return n


def seed_global_generators(seed: int, rank: int) -> None:
    """Seed torch's global generators (CPU, and every CUDA device) from ``train.seed``, differently
    on each process: a plugin drawing from them is then reproducible. The run's own draws (data,
    noise, estimator) come from generators of their own, which this leaves alone; a resume then
    restores the global state from the checkpoint."""
    torch.manual_seed((seed + 7919 * rank) % 2**64)


def rng_state(gens: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    state = {f"gen_{k}": g.get_state() for k, g in gens.items()}
    state["torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch_cuda_{i}"] = s
    return state


def set_rng_state(gens: dict[str, torch.Generator], state: dict[str, torch.Tensor]) -> None:
    for k, g in gens.items():
        g.set_state(state[f"gen_{k}"])
    torch.set_rng_state(state["torch_cpu"])
    cuda = [state[k] for k in sorted(state) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def gather_ranks(acc: Any, local: T) -> list[T]:
    """Every process's ``local`` (a collective), in rank order; a list of one without several processes."""
    if acc.num_processes == 1:
        return [local]
    from accelerate.utils import gather_object

    return list(gather_object([local]))


def average_gradients(acc: Any, params: list[torch.nn.Parameter], scalars: list[float]) -> list[float]:
    """Average the gradients and ``scalars`` over processes in one all-reduce."""
    if acc.num_processes == 1:
        return scalars
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat(
        [g.flatten() for g in grads] + [torch.tensor(scalars, dtype=grads[0].dtype, device=grads[0].device)]
    )
    flat = acc.reduce(flat, reduction="mean")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
    return [float(v) for v in flat[offset:].tolist()]


def any_process(acc: Any, flag: bool) -> bool:
    """Whether ``flag`` holds on any process (a collective when there are several)."""
    if acc.num_processes == 1:
        return flag
    return bool(acc.reduce(torch.tensor([float(flag)], device=acc.device), reduction="sum").item() > 0)
