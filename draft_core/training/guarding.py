"""The guards in a run (draft_core.training.guards decides): built and replayed at setup, asked
about each metrics row, and ``lora/best/``, the LoRA of the best validation step, kept beside the
last. ``lora/`` is replaced whole at every checkpoint (checkpoint.replace_folder), so the best one
is copied into each new ``lora/`` before the swap.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from draft_core.errors import DraftError
from draft_core.lora import save_lora
from draft_core.lora.card import run_card_info, write_model_card
from draft_core.media import read_metrics
from draft_core.rundir import BEST, RunDir
from draft_core.training.checkpoint import replace_folder
from draft_core.training.guards import Guards, build_guards


class GuardStopped(DraftError):
    """A resumed run that its guards had stopped (``train.stop_when``)."""


def setup_guards(trainer: Any, resume: bool) -> Guards:
    """The run's guards; a resumed run's are replayed over its metrics rows (cut back to its checkpoint)."""
    guards = build_guards(trainer.config)
    if resume:
        guards.replay(read_metrics(trainer.run.metrics))
        if guards.stopped is not None:
            raise GuardStopped(
                f"--resume {trainer.run_dir}: train.stop_when stopped this run at {guards.stopped}, and the same rules "
                f"stop it again. To train on, resume with other rules or none: --set train.stop_when=[] (its LoRA at the "
                f"stop is in lora/, the best validation's in lora/best/)."
            )
    return guards


def guard_row(trainer: Any, row: dict[str, Any]) -> bool:
    """Note the guards' verdict in ``row`` and keep this step's LoRA as lora/best/ when it is the best
    validation yet (main process). True when a rule fired: the run stops after this step."""
    verdict = trainer.guards.note(row)
    if verdict.best and trainer.acc.is_main_process:
        save_best(trainer.run_dir, trainer.model, trainer.learned, trainer.guards)
    if verdict.stop:
        trainer.log(f"train.stop_when: {verdict.stop}; stopping here (the best validation's LoRA is in lora/best/)")
    return verdict.stop is not None


def with_best(write: Callable[[Path], None], lora: Path) -> Callable[[Path], None]:
    """``write`` (fills a folder with the last LoRA), then a copy of ``lora/best/`` beside it."""

    def fill(new: Path) -> None:
        write(new)
        if (lora / BEST).is_dir():
            shutil.copytree(lora / BEST, new / BEST)

    return fill


def save_best(run_dir: Path, model: Any, learned: Any, guards: Guards) -> Path:
    """Write the model's LoRA (and learned sampler hyperparameters) to ``run_dir/lora/best/`` with its card."""
    best = RunDir(run_dir).lora_best

    def fill(folder: Path) -> None:
        save_lora(model, folder)
        if learned is not None:
            learned.save(folder)
        value = guards.best_value if guards.best_value is not None else float("nan")
        # this step's row is not in metrics.jsonl yet, so the rows' best_validation_step is the previous best
        info = {
            **run_card_info(run_dir),
            "steps": guards.best_step,
            "best_validation_step": f"{guards.best_step} (its LoRA: lora/best/)",
            "chosen_as": f"the best {guards.best_metric} ({value:.4g}) of the validations so far",
        }
        write_model_card(folder, info, location=best)

    replace_folder(fill, best)
    return best
