"""Learning-rate schedules: diffusers' ``get_scheduler`` (constant, linear, cosine, each after
``train.lr_warmup_steps`` of linear warm-up) and the paper's sqrt decay.

Both are multiplicative factors on each parameter group's learning rate, so groups with their
own multiplier (the learned guidance schedule's) keep their ratio. The paper's decay,
``min(10 · step^-0.5, 1)``, combines only with the constant schedule: the factor is then the
warm-up's times the decay's. A decaying diffusers schedule with it is refused (two decays
of one rate would be a schedule nobody asked for).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def lr_factor(decay: str) -> Callable[[int], float]:
    if decay == "sqrt":  # the paper's min(10 · step^-0.5, 1), steps counted from 1
        return lambda i: min(10.0 * (i + 1) ** -0.5, 1.0)
    return lambda i: 1.0


def diffusers_factor(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """The LR factor after ``i`` optimiser steps that diffusers' ``get_scheduler`` gives
    (``constant`` with a warm-up is its ``constant_with_warmup``)."""
    from diffusers.optimization import get_scheduler

    name = "constant_with_warmup" if schedule == "constant" and warmup > 0 else schedule
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # only its lambda is kept
    factor: Callable[[int], float] = get_scheduler(
        name, probe, num_warmup_steps=warmup, num_training_steps=total
    ).lr_lambdas[0]
    return factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, train: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """``train``: the config's train section (lr_schedule, lr_warmup_steps, lr_decay, steps).

    A LambdaLR whose state (step count, base rates) is what checkpoints hold; the factor is
    rebuilt from the config on resume, so a resumed run with more ``train.steps`` stretches a
    linear or cosine schedule to the new end.
    """
    schedule = diffusers_factor(train.lr_schedule, train.lr_warmup_steps, train.steps)
    decay = lr_factor(train.lr_decay)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: schedule(i) * decay(i))
