"""The trainer's state as one nested dict (``Trainer.state_dict()``), and its checkpoint files.

The parts, by name::

    step            completed optimiser steps
    num_processes   the processes that wrote it (a resume needs as many: each one's streams are in it)
    lora            the adapter's tensors (peft keys)
    optimizer       AdamW's state_dict (the LoRA group, then any learned sampler hyperparameters)
    scheduler       the LR schedule's state_dict
    rng             per rank: the data, noise and estimator generators and torch's global states
    ema             the weight average's tensors (empty without one)
    learned         the learned sampler hyperparameters' tensors (empty without them)
    estimator       per rank: the estimator's own state_dict (e.g. ddpo's stored samples)
    nonfinite       the skipped-update counters

On disk (``checkpoint.TrainingState``; the layout every earlier checkpoint has, so each still resumes):
``rng.safetensors`` holds rank 0's keys as they are and rank r's as ``rank{r}/KEY``;
``extra.safetensors`` holds ``learned_sampling.KEY``, the average's ``weights_ema.KEY`` and the
estimator's keys, ranked the same way (plain numbers as 0-d tensors, their keys listed in
``state.json``'s ``estimator_numbers``); ``state.json`` holds the rest. Reading classifies each key
by its prefix, in that order.
"""

from __future__ import annotations

import re
from typing import Any

from draft_core.training.checkpoint import TrainingState
from draft_core.training.ema import PREFIX as EMA_PREFIX
from draft_core.training.plugin_state import pack_state, unpack_state

LEARNED_PREFIX = "learned_sampling."  # extra.safetensors keys of the learned sampler hyperparameters
STATE_NUMBERS = "estimator_numbers"  # state.json key: the estimator state's keys that were plain numbers
PARTS = ("step", "num_processes", "lora", "optimizer", "scheduler", "rng", "ema", "learned", "estimator", "nonfinite")
_RANKED = re.compile(r"rank(\d+)/(.*)", re.DOTALL)


def ranked(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """One flat dict of every rank's entries: rank 0's keys as they are, rank r's as ``rank{r}/KEY``."""
    flat = dict(per_rank[0]) if per_rank else {}
    for r, entries in enumerate(per_rank[1:], start=1):
        flat.update({f"rank{r}/{k}": v for k, v in entries.items()})
    return flat


def unranked(flat: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """``ranked``'s inverse, for ``n`` processes (a ``rank{r}/`` key beyond them is ignored, as before)."""
    per_rank: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in flat.items():
        m = _RANKED.fullmatch(key)
        if m is None:
            per_rank[0][key] = value
        elif 0 < int(m.group(1)) < n:
            per_rank[int(m.group(1))][m.group(2)] = value
    return per_rank


def to_checkpoint(state: dict[str, Any], label: str) -> TrainingState:
    """The files of ``state`` (``label``: the estimator, named in an error about its state)."""
    packed = [pack_state(s, label) for s in state["estimator"]]
    extra = ranked([tensors for tensors, _ in packed])
    extra.update({LEARNED_PREFIX + k: v for k, v in state["learned"].items()})
    extra.update(state["ema"])
    return TrainingState(
        step=state["step"],
        lora=state["lora"],
        optimizer=state["optimizer"],
        lr_scheduler=state["scheduler"],
        rng=ranked(state["rng"]),
        extra=extra or None,
        meta={
            "num_processes": state["num_processes"],
            "nonfinite": state["nonfinite"],
            STATE_NUMBERS: packed[0][1] if packed else {},
        },
    )


def from_checkpoint(files: TrainingState) -> dict[str, Any]:
    """``to_checkpoint``'s inverse: the nested state of a checkpoint (of this format or any earlier one)."""
    n = int(files.meta.get("num_processes", 1))
    learned, ema, estimator = {}, {}, {}
    for key, value in (files.extra or {}).items():
        if key.startswith(LEARNED_PREFIX):
            learned[key[len(LEARNED_PREFIX) :]] = value
        elif key.startswith(EMA_PREFIX):
            ema[key] = value
        else:
            estimator[key] = value
    numbers = files.meta.get(STATE_NUMBERS) or {}
    return {
        "step": files.step,
        "num_processes": n,
        "lora": files.lora,
        "optimizer": files.optimizer,
        "scheduler": files.lr_scheduler,
        "rng": unranked(files.rng, n),
        "ema": ema,
        "learned": learned,
        "estimator": [unpack_state(s, numbers) for s in unranked(estimator, n)],
        "nonfinite": files.meta.get("nonfinite") or {},
    }
