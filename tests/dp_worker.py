"""Launched by tests/test_distributed.py under torchrun (not a test itself): runs the real
`draft train` CLI in each process, then resumes the run in the same processes, and records
for the test each process's final LoRA and which run-folder writes it made."""

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


def train_and_record(self):
    out = train(self)
    save_file(lora_state(self.model.unet), dump / f"rank{rank}-step{self.step}.safetensors")
    return out


runner.Trainer.train = train_and_record
# The first part of the run, then a resume in the same processes (checkpoint saved and loaded by both).
split = int(os.environ.get("DP_WORKER_SPLIT", steps - 1))  # the step after which the run stops and resumes
codes = [cli.main(["train", *sys.argv[4:], "--out", run, "--no-progress", "--set", f"train.steps={split}"]),
         cli.main(["train", "--resume", run, "--no-progress", "--set", f"train.steps={steps}"])]
(dump / f"rank{rank}.json").write_text(json.dumps({"codes": codes, "writes": writes}))
