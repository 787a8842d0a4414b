"""Data parallel through Accelerate on 2 CPU processes (gloo), launched with torchrun.

Each process takes its slice of the same global batch; gradients are averaged in one
all-reduce. Checked: the LoRA is bitwise identical on both processes; it matches a
1-process run of the same global batch and seeds; only the main process writes the run
folder; a checkpoint is saved and resumed by both processes without deadlock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from draft_core import cli

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
SETS = [
    "model.name=tiny-random",
    "reward.name=jpeg-compressibility",
    "prompts.source=animals",
    "sampler.steps=3",
    "estimator={name: draft-k, k: 1}",
    "train.batch_size=2",
    "train.lr=0.01",
    "train.sample_every=0",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat]",
    "lora.rank=2",
    "train.checkpoint_every=1",
]
ARGS = ["--preset", "quickstart", *sum((["--set", s] for s in SETS), [])]


def test_two_processes_match_one_and_stay_in_sync(tmp_path):
    dump, run, single = tmp_path / "dump", tmp_path / "run", tmp_path / "single"
    dump.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "dp_worker.py"),
        str(dump),
        str(run),
        str(STEPS),
        *ARGS,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The same global batch in one process, straight through.
    assert cli.main(["train", *ARGS, "--out", str(single), "--no-progress", "--set", f"train.steps={STEPS}"]) == 0

    ranks = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["codes"] for r in ranks] == [[0, 0], [0, 0]]
    # Only the main process writes: config, checkpoints, LoRA, curve, samples.
    assert {"config", "checkpoint", "lora", "samples"} <= set(ranks[0]["writes"]) and ranks[1]["writes"] == []
    assert ranks[0]["writes"].count("checkpoint") == STEPS
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # one row per step, not one per process
    assert all(r["reward_queries"] == 2 for r in rows)  # the global batch
    # Each process's random stream is in the checkpoint (the resume above used it).
    rng = load_file(run / "checkpoints" / f"step-{STEPS:06d}" / "rng.safetensors")
    assert {"gen_estimator", "rank1/gen_estimator"} <= set(rng)

    a, b = (load_file(dump / f"rank{r}-step{STEPS}.safetensors") for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a), "the LoRA differs between processes"
    # The run folder's LoRA (diffusers layout, written by the main process) is that LoRA.
    saved = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    one = load_file(single / "lora" / "pytorch_lora_weights.safetensors")
    assert saved.keys() == one.keys() == {f"unet.{k}" for k in a}
    assert all(torch.equal(saved[f"unet.{k}"], a[k]) for k in a)
    assert max(v.abs().max().item() for k, v in saved.items() if "lora_B" in k) > 1e-3  # it trained
    for k in saved:
        # Batched and unbatched kernels round differently; a sum instead of a mean, a shared
        # noise slice or a missing all-reduce would differ by far more than this.
        torch.testing.assert_close(saved[k], one[k], rtol=1e-3, atol=1e-5, msg=k)
    single_rows = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    for r, s in zip(rows, single_rows):
        assert abs(r["reward_mean"] - s["reward_mean"]) < 1e-4 * max(1.0, abs(s["reward_mean"]))
