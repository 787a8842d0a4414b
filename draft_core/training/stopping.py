"""The checkpoint a run writes when it stops early (a failure, a signal, Ctrl-C): only at a point every
process agreed on, and only when the state in memory is the last step whose metrics row was written."""

from __future__ import annotations

from typing import Any

import torch

from draft_core.training.checkpoint import latest_checkpoint


def checkpoint_after_stop(trainer: Any, rng: dict[str, torch.Tensor]) -> bool:
    """Checkpoint ``trainer``'s last completed step (``rng``: its RNG state) when that is safe; False
    (and a line saying which checkpoint is kept) when nothing was written."""
    return save_is_safe(trainer) and save_after_failure(trainer, rng)


def save_is_safe(trainer: Any) -> bool:
    """A checkpoint is a collective: with several processes, write one only when every
    process stopped at the same agreed point; otherwise the last periodic one is kept."""
    if trainer.acc.num_processes == 1 or trainer._agreed:
        return True
    latest = latest_checkpoint(trainer.run.checkpoints)
    trainer.log(f"stopped outside a synchronised point, so no new checkpoint; the last one ({latest}) is kept.")
    return False


def save_after_failure(trainer: Any, rng: dict[str, torch.Tensor]) -> bool:
    """Checkpoint the last completed step after a failure, when the state in memory is that
    step's: the metrics rows and the checkpoints then always agree. False when nothing was saved."""
    latest = latest_checkpoint(trainer.run.checkpoints)
    if trainer.step != trainer.rows_step:
        trainer.log(
            f"step {trainer.step} updated the LoRA but its metrics row was never written, so no new "
            f"checkpoint is written; the last one ({latest}) is kept."
        )
        return False
    try:
        trainer.save(rng=rng)
    except Exception as exc:  # the original failure is the one to report
        trainer.log(
            f"could not write a checkpoint after the failure ({type(exc).__name__}: {exc}); "
            f"the last one ({latest}) is kept."
        )
        return False
    return True
