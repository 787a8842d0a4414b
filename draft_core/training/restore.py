"""Resuming a run: the LoRA, optimiser, schedule, random streams, learned sampler hyperparameters, the
weight average and each process's estimator state from the latest checkpoint; metrics cut back to it."""

from __future__ import annotations

from typing import Any

import re

from draft_core.lora import load_lora_state
from draft_core.lora.validate import check_lora_state
from draft_core.training.checkpoint import CheckpointError, latest_checkpoint, load_latest
from draft_core.training.distributed import set_rng_state
from draft_core.training.metrics import truncate_metrics
from draft_core.training.plugin_state import unpack_state

LEARNED_PREFIX = "learned_sampling."  # checkpoint keys of the learned sampler hyperparameters
STATE_NUMBERS = "estimator_numbers"  # meta key: the estimator state's keys that were plain numbers


def restore(trainer: Any) -> None:
    """Load ``trainer``'s state from its run folder's latest checkpoint (or start over without one)."""
    if latest_checkpoint(trainer.run_dir / "checkpoints") is None:
        # Stopped before its first checkpoint: start again from step 0 in the same folder.
        trainer.log(f"--resume {trainer.run_dir}: no checkpoint yet, so the run starts again from step 0")
        if trainer.acc.is_main_process:
            truncate_metrics(trainer.run_dir / "metrics.jsonl", -1)  # step 0's validation runs again too
            trainer.config.dump(trainer.run_dir / "config.yaml")
        return
    path, state = load_latest(trainer.run_dir / "checkpoints", warn=trainer.log)
    n, rank = trainer.acc.num_processes, trainer.acc.process_index
    saved_n = int(state.meta.get("num_processes", 1))
    if saved_n != n:
        raise CheckpointError(
            f"--resume {trainer.run_dir}: the checkpoint was written by {saved_n} process(es), this run has {n}. "
            f"Resume with {saved_n} (each process's random stream is in the checkpoint)."
        )
    check_lora_state(state.lora, f"checkpoint '{path}': lora.safetensors")  # finite, floating, paired factors
    load_lora_state(trainer.model, {k: v.to(trainer.model.device) for k, v in state.lora.items()})
    trainer.optimizer.load_state_dict(state.optimizer)
    trainer.lr_scheduler.load_state_dict(state.lr_scheduler)
    prefix = f"rank{rank}/"
    rng = state.rng if rank == 0 else {k[len(prefix):]: v for k, v in state.rng.items() if k.startswith(prefix)}
    set_rng_state(trainer.gens, rng)
    extra = dict(state.extra or {})
    learned = {k[len(LEARNED_PREFIX):]: extra.pop(k) for k in list(extra) if k.startswith(LEARNED_PREFIX)}
    if learned and trainer.learned is not None:
        trainer.learned.load_state_dict({k: v.to(trainer.model.device) for k, v in learned.items()})
    trainer.ema.load_state_dict(extra)
    if extra:
        # Estimator state is per process (e.g. ddpo's stored trajectories): this process's entries.
        own = {k: v for k, v in extra.items() if not re.match(r"rank\d+/", k)} if rank == 0 else \
            {k[len(prefix):]: v for k, v in extra.items() if k.startswith(prefix)}
        trainer.c.estimator.load_state_dict(unpack_state(own, state.meta.get(STATE_NUMBERS) or {}))
    trainer.nonfinite.load(state.meta)
    trainer.step = trainer.saved_step = state.step
    if trainer.acc.is_main_process:
        truncate_metrics(trainer.run_dir / "metrics.jsonl", state.step)
        trainer.config.dump(trainer.run_dir / "config.yaml")
    trainer.log(f"resumed from {path} (step {state.step})")
