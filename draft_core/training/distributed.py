"""What a training step needs from the processes of a data-parallel run: RNG state to checkpoint and
restore, gradients averaged in one all-reduce, and agreement on whether any process saw a flag."""

from __future__ import annotations

from typing import Any, TypeVar

import torch

T = TypeVar("T")


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
    flat = torch.cat([g.flatten() for g in grads] + [torch.tensor(scalars, dtype=grads[0].dtype, device=grads[0].device)])
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
