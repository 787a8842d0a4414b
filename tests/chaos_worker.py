"""``draft train`` for the chaos test (tests/test_chaos_resume.py): the run stops at one chosen
moment, says ``held <moment>`` and waits there to be killed. The test forks a process that calls
``install(at, fd)`` and ``cli.main``; ``python tests/chaos_worker.py ARGS`` with env ``CHAOS_AT``
does the same from a shell (printing to stdout).

A moment is ``PHASE:STEP`` (empty: run to the end), PHASE one of
``batch`` (step STEP has drawn its batch, before the estimator), ``update`` (its optimiser step
is done, its metrics row not yet written), ``validation`` (inside the validation after STEP),
``checkpoint`` (step STEP's checkpoint folder half written) and ``lora`` (checkpoint STEP
written, the run's lora/ folder being replaced). The reward ``noisy-jpeg`` adds a draw from
torch's global generator, so equal runs also need that generator seeded and restored.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from draft_core import hookimpl

PHASES = ("batch", "update", "validation", "checkpoint", "lora")  # their order within a step
AT = ""  # the moment to hold at
SAY = 1  # the file descriptor "held <moment>" is written to


def hold(phase: str, step: int) -> None:
    if AT == f"{phase}:{step}":
        os.write(SAY, f"held {AT}\n".encode())
        time.sleep(600)  # until SIGKILL


class NoisyJpeg:
    """JPEG compressibility plus 1e-3 · U(0, 1) drawn from torch's global CPU generator."""

    def __init__(self) -> None:
        from draft_rewards.jpeg import JpegCompressibility

        self.jpeg = JpegCompressibility()

    def __call__(self, images: torch.Tensor, prompts) -> torch.Tensor:
        return self.jpeg(images, prompts) + 1e-3 * torch.rand(images.shape[0]).to(images)


class ChaosPlugin:
    @hookimpl
    def register_rewards(self, register):
        register("noisy-jpeg", NoisyJpeg)


def register() -> None:
    from draft_core.plugins import load_registry

    load_registry().register_plugin(ChaosPlugin(), "chaos_worker")


def install(at: str, say: int = 1) -> None:
    """Put the hold at moment ``at`` into the training code (of this process: call it in a child)."""
    import draft_core.training.checkpoint as checkpoint
    from draft_core.training.runner import Trainer
    from draft_core.training.validation import Validation

    global AT, SAY
    AT, SAY = at, say
    batch, estimator_step, validate, run_validation = (
        Trainer._batch,
        Trainer._estimator_step,
        Trainer.validate,
        Validation.run,
    )
    write_lora, save_file = Trainer._write_lora_folder, checkpoint.save_file
    now = {"step": 0}

    def _batch(self):
        out = batch(self)
        hold("batch", self.step + 1)
        return out

    def _estimator_step(self, applied):
        estimator_step(self, applied)
        hold("update", self.step)

    def _validate(self):
        now["step"] = self.step
        return validate(self)

    def _run(self, *args, **kwargs):
        hold("validation", now["step"])
        return run_validation(self, *args, **kwargs)

    def _save_file(tensors, path, *args, **kwargs):
        save_file(tensors, path, *args, **kwargs)
        folder = os.path.basename(os.path.dirname(str(path)))  # .step-00000N.tmp while it is written
        if folder.startswith(".step-") and os.path.basename(str(path)) == "rng.safetensors":
            hold("checkpoint", int(folder[len(".step-") :].split(".")[0]))

    def _write_lora(self, folder):
        write_lora(self, folder)
        if folder.name == ".lora.tmp":
            hold("lora", self.step)

    Trainer._batch, Trainer._estimator_step, Trainer.validate = _batch, _estimator_step, _validate
    Validation.run, Trainer._write_lora_folder, checkpoint.save_file = _run, _write_lora, _save_file


if __name__ == "__main__":
    from draft_core import cli

    register()
    install(os.environ.get("CHAOS_AT", ""))
    sys.exit(cli.main(sys.argv[1:]))
