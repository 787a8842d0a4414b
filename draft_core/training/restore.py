"""Resuming a run: the latest checkpoint's state into the trainer (``Trainer.load_state_dict``), the
metrics cut back to it; without a checkpoint yet, the run starts again from step 0 in the same folder."""

from __future__ import annotations

from typing import Any

from draft_core.lora.validate import check_lora_state
from draft_core.rundir import RunDir
from draft_core.training.checkpoint import CheckpointError, latest_checkpoint, load_latest
from draft_core.training.metrics import truncate_metrics
from draft_core.training.state import from_checkpoint


def restore(trainer: Any) -> None:
    """Load ``trainer``'s state from its run folder's latest checkpoint (or start over without one)."""
    run = RunDir(trainer.run_dir)
    if latest_checkpoint(run.checkpoints) is None:
        # Stopped before its first checkpoint: start again from step 0 in the same folder.
        trainer.log(f"--resume {run.path}: no checkpoint yet, so the run starts again from step 0")
        if trainer.acc.is_main_process:
            truncate_metrics(run.metrics, -1)  # step 0's validation runs again too
            trainer.config.dump(run.config)
        return
    path, files = load_latest(run.checkpoints, warn=trainer.log)
    state = from_checkpoint(files)
    n = trainer.acc.num_processes
    if state["num_processes"] != n:
        raise CheckpointError(
            f"--resume {run.path}: the checkpoint was written by {state['num_processes']} process(es), this run has {n}. "
            f"Resume with {state['num_processes']} (each process's random stream is in the checkpoint)."
        )
    check_lora_state(state["lora"], f"checkpoint '{path}': lora.safetensors")  # finite, floating, paired factors
    trainer.load_state_dict(state)
    if trainer.acc.is_main_process:
        truncate_metrics(run.metrics, state["step"])
        trainer.config.dump(run.config)
    trainer.log(f"resumed from {path} (step {state['step']})")
