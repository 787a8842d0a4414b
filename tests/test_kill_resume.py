"""Exact resume after a real SIGKILL: a `draft train` subprocess is killed with kill -9 after
an arbitrary checkpoint, resumed with `draft train --resume`, and must end with the same LoRA,
bit for bit, as an uninterrupted run (LoRA, its weight average, optimiser, LR schedule, data order
and every RNG stream come back from the checkpoint). SIGTERM in a subprocess checkpoints and says how to resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.utils import is_tensorboard_available
from safetensors.torch import load_file

from draft_core import cli

ROOT = Path(__file__).resolve().parents[1]
SETS = [
    "model.name=tiny-random",
    "reward.name=jpeg-compressibility",
    "prompts.source=animals",
    "sampler.steps=3",
    "estimator={name: draft-lv, n: 1}",
    "train.batch_size=2",
    "train.lr=0.01",
    "train.lr_decay=sqrt",
    "train.sample_every=0",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat]",
    "lora.rank=2",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=2",
    "train.steps=4",
    "train.ema.decay=0.9",
    *(["train.trackers=[tensorboard]"] if is_tensorboard_available() else []),
]


def argv(out: Path) -> list[str]:
    return [
        "train",
        "--preset",
        "quickstart",
        "--out",
        str(out),
        "--no-progress",
        *sum((["--set", s] for s in SETS), []),
    ]


def start(out: Path) -> subprocess.Popen:
    # The killed run must use this process's intra-op thread count (the suite's, see DRAFT_TEST_THREADS):
    # the reference and the resume run here, and another count rounds the kernels' sums differently.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "draft_core.cli", *argv(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, step: int, timeout: float = 240) -> int:
    pointer = out / "checkpoints" / "latest"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if pointer.exists():
            name = pointer.read_text().strip()
            if name and int(name.split("-")[1]) >= step:
                return int(name.split("-")[1])
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no checkpoint of step {step} after {timeout} s")


def lora(out: Path, folder: str = "lora") -> dict[str, torch.Tensor]:
    return load_file(out / folder / "pytorch_lora_weights.safetensors")


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_at_an_arbitrary_step_then_resume_is_bitwise_identical(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    proc = start(run)
    assert cli.main(argv(ref)) == 0  # the uninterrupted run, meanwhile, in this process
    seen = wait_for_checkpoint(proc, run, 2)
    proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: wherever the process is now
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # A kill can land while a metrics row is half written; the resume must drop it too.
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "reward_me')
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    a, b = lora(ref), lora(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"killed after step {seen}"
    a, b = lora(ref, "lora_ema"), lora(run, "lora_ema")  # the weight average, too
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"average, killed after step {seen}"
    assert [r["step"] for r in rows(run)] == list(range(1, 5))
    assert [r["reward_mean"] for r in rows(run)] == [r["reward_mean"] for r in rows(ref)]
    assert [r["lr"] for r in rows(run)] == [r["lr"] for r in rows(ref)]
    if is_tensorboard_available():  # TensorBoard dropped what the killed process logged after its checkpoint
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run / "logs" / "draft"))
        events.Reload()
        logged = [(e.step, e.value) for e in events.Scalars("reward_mean")]
        assert logged == [
            (r["step"], pytest.approx(r["reward_mean"], rel=1e-6)) for r in rows(ref)
        ]  # float32 in the file
    assert not list((run / "checkpoints").glob(".*")) and not list(run.glob(".lora*"))
    assert not list(run.glob(".lora_ema*"))


def test_sigterm_finishes_the_step_checkpoints_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    proc = start(run)
    wait_for_checkpoint(proc, run, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"Resume with: draft train --resume {run}" in err and "Traceback" not in err
    step = int((run / "checkpoints" / "latest").read_text().split("-")[1])
    assert 1 <= step < 4 and [r["step"] for r in rows(run)] == list(range(1, step + 1))
