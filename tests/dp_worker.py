"""Launched by tests/test_distributed.py and tests/test_fsdp.py under torchrun (not a test itself): runs
the real `draft train` CLI in each process, then resumes the run in the same processes, and records
for the test each process's final LoRA, which run-folder writes it made, and the share of the
denoiser's frozen weights it held (1 unless sharded). With DP_WORKER_PLAIN=FOLDER, a plain
data-parallel run of the same arguments follows, straight through into FOLDER (FSDP turned off); with
DP_WORKER_GRADS=1, each step's averaged LoRA gradient is dumped too."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from safetensors.torch import save_file  # noqa: E402

import draft_core.training.pictures as pictures  # noqa: E402
import draft_core.training.runner as runner  # noqa: E402
from draft_core import cli  # noqa: E402
from draft_core.config import Config  # noqa: E402
from draft_core.lora import lora_state  # noqa: E402

dump, run, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rank = int(os.environ["RANK"])
writes: list[str] = []
shares: list[float] = []  # per run: this process's elements of the frozen denoiser weights / all of them
prefix = ""  # of the LoRA files dumped


def recording(name, fn):
    def wrapper(*args, **kwargs):
        writes.append(name)
        return fn(*args, **kwargs)

    return wrapper


runner.save_checkpoint = recording("checkpoint", runner.save_checkpoint)
runner.replace_folder = recording("lora", runner.replace_folder)
runner.plot_reward_curve = recording("reward_curve", runner.plot_reward_curve)
pictures.save_grid = recording("samples", pictures.save_grid)
Config.dump = recording("config", Config.dump)
train = runner.Trainer.train
average_gradients = runner.average_gradients


def average_and_record(acc, params, scalars):
    out = average_gradients(acc, params, scalars)
    if os.environ.get("DP_WORKER_GRADS"):  # the step about to be taken is the trainer's step + 1
        step = 1 + sum(1 for f in dump.glob(f"{prefix}rank{rank}-grad*"))
        save_file(
            {f"{i}": p.grad.detach().clone() for i, p in enumerate(params)},
            dump / f"{prefix}rank{rank}-grad{step}.safetensors",
        )
    return out


runner.average_gradients = average_and_record


def train_and_record(self):
    out = train(self)
    frozen = [p for p in self.model.denoiser.parameters() if not p.requires_grad]
    shares.append(
        sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in frozen)
        / sum(p.numel() for p in frozen)
    )
    save_file(lora_state(self.model.denoiser), dump / f"{prefix}rank{rank}-step{self.step}.safetensors")
    return out


runner.Trainer.train = train_and_record
# The first part of the run, then a resume in the same processes (checkpoint saved and loaded by both).
split = int(os.environ.get("DP_WORKER_SPLIT", steps - 1))  # the step after which the run stops and resumes
codes = [
    cli.main(["train", *sys.argv[4:], "--out", run, "--no-progress", "--set", f"train.steps={split}"]),
    cli.main(["train", "--resume", run, "--no-progress", "--set", f"train.steps={steps}"]),
]
if plain := os.environ.get("DP_WORKER_PLAIN"):
    os.environ["ACCELERATE_USE_FSDP"] = "false"  # read at each run's setup (training/fsdp.py)
    prefix = "plain-"
    codes.append(cli.main(["train", *sys.argv[4:], "--out", plain, "--no-progress", "--set", f"train.steps={steps}"]))
(dump / f"rank{rank}.json").write_text(json.dumps({"codes": codes, "writes": writes, "shares": shares}))
