"""Chaos resume: one run is killed with SIGKILL at moments a seeded RNG picks (during a step,
right after its update, during a validation, halfway through a checkpoint, while the LoRA folder
is replaced), resumed with `draft train --resume` after each kill, and must end with the LoRA,
the optimiser state and the metrics of an uninterrupted run, bit for bit; for a gradient
estimator (draft-lv) and for grpo (stored batches). The reward draws from torch's global
generator too, so this also checks that it is seeded per process and restored at resume.
The killed processes are forks of the test's (tests/test_kill_resume.py kills a `draft train`
subprocess started from scratch); a new process each would cost seconds of imports per kill."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import chaos_worker
import pytest
import torch
from safetensors.torch import load_file

from draft_core import cli
from draft_core.plugins import discovery
from draft_core.training.checkpoint import latest_checkpoint, safe_torch_load

STEPS, SEED = 4, 2026
SETS = [
    "model.name=tiny-random",
    "reward.name=noisy-jpeg",
    "prompts.source=animals",
    "sampler.steps=2",
    "train.batch_size=1",
    "train.lr=0.01",
    "train.sample_every=0",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat]",
    "lora.rank=2",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=2",
    f"train.steps={STEPS}",
    "train.validation={prompts: [a dog], every: 2, n_per_prompt: 1}",
]
ESTIMATORS = {
    "draft-lv": ["estimator={name: draft-lv, n: 1}"],
    "grpo": ["estimator={name: grpo, group_size: 2, minibatches: 2}", "sampler={name: ddim, steps: 2, eta: 1.0}"],
}


def argv(out: Path, estimator: str) -> list[str]:
    return [
        "train",
        "--preset",
        "quickstart",
        "--out",
        str(out),
        "--no-progress",
        *sum((["--set", s] for s in SETS + ESTIMATORS[estimator]), []),
    ]


def moments(rng: random.Random, kills: int) -> list[str]:
    """``kills`` distinct moments in the order the run meets them (each after the resume from the last)."""
    every = [("validation", 0)] + [
        (phase, step)
        for step in range(1, STEPS + 1)
        for phase in chaos_worker.PHASES
        if phase != "validation" or step % 2 == 0
    ]
    picked = sorted(rng.sample(range(len(every)), kills))
    return [f"{every[i][0]}:{every[i][1]}" for i in picked]


def killed_at(args: list[str], at: str) -> None:
    """Run ``draft train ARGS`` in a forked process (it shares this process's imports, so it starts
    in no time, and its thread count) and SIGKILL it once it holds at moment ``at``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: train until the hold, never back into pytest
        code = 1
        try:
            os.close(read)
            chaos_worker.install(at, write)
            code = cli.main(args)
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as said:
        line = said.readline()  # blocks until the hold, or "" when the child ended without reaching it
        os.kill(pid, signal.SIGKILL)  # no handler, no cleanup
    _, status = os.waitpid(pid, 0)
    assert line.strip() == f"held {at}", f"the run never reached {at} (exit status {status})"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def final_state(run: Path) -> tuple[dict, dict, list[dict]]:
    lora = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    optimizer = safe_torch_load(latest_checkpoint(run / "checkpoints") / "optimizer.pt")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds", None)  # wall time, the one field that may differ
    return lora, optimizer, rows


def same_tree(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_sigkill_at_random_moments_and_resume_equal_an_uninterrupted_run(tmp_path, monkeypatch, estimator):
    rng = random.Random(f"{SEED}-{estimator}")
    kills = moments(rng, 3)
    print(f"chaos ({estimator}, seed {SEED}): SIGKILL at {', '.join(kills)}")  # in the test output (-s, or on failure)
    ref, run = tmp_path / "ref", tmp_path / "run"
    monkeypatch.setattr(discovery, "_cache", None)  # restored afterwards
    chaos_worker.register()
    assert cli.main(argv(ref, estimator)) == 0  # the uninterrupted run, in this process
    for i, at in enumerate(kills):
        killed_at(argv(run, estimator) if i == 0 else ["train", "--resume", str(run), "--no-progress"], at)
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0  # at once: the killed runs held no lock
    (a_lora, a_opt, a_rows), (b_lora, b_opt, b_rows) = final_state(ref), final_state(run)
    assert same_tree(a_lora, b_lora), f"LoRA differs after kills at {kills}"
    assert same_tree(a_opt, b_opt), f"optimiser state differs after kills at {kills}"
    assert a_rows == b_rows and [r["step"] for r in b_rows] == list(range(STEPS + 1)), f"metrics differ after {kills}"
    assert not list(run.glob(".*.tmp")) and not list((run / "checkpoints").glob(".*"))
