"""FSDP2 on the frozen base (draft_core.training.fsdp), on 2 CPU processes (gloo) launched with torchrun:
each process holds half of every frozen weight, the LoRA stays a plain replicated tensor, and the LoRA
gradient of a DRaFT-1 step equals the unsharded model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from draft_core import cli

ROOT = Path(__file__).resolve().parents[1]


def test_sharded_base_gives_the_unsharded_gradient(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "fsdp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        info = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # tiny-random-flux: 1 double-stream and 1 single-stream block, plus the transformer's own layers.
        assert info["units"] == 3 and info["kinds"] == ["DTensor", "Parameter"]
        assert info["local"] * 2 <= info["full"] + 64  # half of each frozen weight (dims of odd size round up)
        grads = load_file(tmp_path / f"rank{rank}.safetensors")
        assert grads["plain"].abs().max() > 0
        # The same arithmetic on gathered weights: float32 rounding at most (reductions may be ordered otherwise).
        torch.testing.assert_close(grads["sharded"], grads["plain"], rtol=1e-5, atol=1e-7 * grads["plain"].abs().max().item())


@pytest.mark.slow  # the sharding itself is covered above; this is the runner's wiring (about a minute)
def test_runner_shards_under_an_fsdp_launch_and_trains_as_one_process(tmp_path):
    sets = ["model.name=tiny-random-flux", "sampler={name: euler, steps: 2, guidance_scale: 3.5}",
            "reward.name=jpeg-compressibility", "prompts.items=[a cat, a dog]", "estimator={name: draft-k, k: 1}",
            "train.batch_size=2", "train.steps=2", "train.sample_every=1", "train.sample_per_prompt=1",
            "train.sample_prompts=[a cat]", "lora.rank=2", "train.checkpoint_every=1"]
    args = ["train", "--preset", "quickstart", "--no-progress", *sum((["--set", s] for s in sets), [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_FSDP": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "draft_core.cli",
           *args, "--out", str(tmp_path / "fsdp")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP: the frozen transformer sharded over 2 processes" in proc.stderr
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    a, b = (load_file(tmp_path / run / "lora" / "pytorch_lora_weights.safetensors") for run in ("fsdp", "one"))
    assert a.keys() == b.keys()
    for k in a:  # each process computes half the batch; the mean of two halves rounds otherwise than one batch
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-3 * b[k].abs().max().item())
