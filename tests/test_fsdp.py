"""FSDP2 on the frozen base (draft_core.training.fsdp) under `draft train`, on 2 CPU processes (gloo)
launched with torchrun and accelerate's FSDP flag (DRaFT-K, K = 2, the blocks checkpointed: their
recomputation gathers the weights again): each process holds half of every frozen weight, the LoRA
stays a plain replicated tensor, grids and validation run after every step (every process takes
part in their sharded forwards, only the main one writes), a checkpoint is saved and resumed, and the
trained LoRA equals a plain data-parallel run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from draft_core.config import load_config
from draft_core.errors import ConfigError
from draft_core.training.fsdp import shard_under_fsdp

ROOT = Path(__file__).resolve().parents[1]
SETS = [
    "model.name=tiny-random-flux",
    "sampler={name: euler, steps: 2, guidance_scale: 3.5}",
    "estimator={name: draft-k, k: 2}",
    "train.checkpoint_denoiser=blocks",
    "reward={name: ink-coverage, softness: 0.05}",
    "train.batch_size=2",
    "train.lr=0.01",
    "train.sample_every=1",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat]",
    "lora.rank=2",
    "train.checkpoint_every=1",
    "train.validation.prompts=[a dog]",
    "train.validation.every=1",
    "train.validation.n_per_prompt=1",
]
ARGS = ["--preset", "quickstart", *sum((["--set", s] for s in SETS), [])]


def test_draft_train_shards_the_base_under_an_fsdp_launch(tmp_path):
    dump, run, plain = tmp_path / "dump", tmp_path / "run", tmp_path / "plain"
    dump.mkdir()
    # tests/dp_worker.py: 1 step, a resume to step 2, then a plain data-parallel run of 2 steps (FSDP off).
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "ACCELERATE_USE_FSDP": "true",
        "DP_WORKER_SPLIT": "1",
        "DP_WORKER_PLAIN": str(plain),
        "DP_WORKER_GRADS": "1",
    }
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
        "2",
        *ARGS,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP: the frozen denoiser is sharded across 2 processes (3 units)" in proc.stderr  # 2 blocks + the rest
    ranks = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["codes"] for r in ranks] == [[0, 0, 0], [0, 0, 0]]
    for r in ranks:  # half of each frozen weight under FSDP (odd sizes round up), all of it in the plain run
        assert 0.5 <= r["shares"][0] == r["shares"][1] < 0.51 and r["shares"][2] == 1.0
    assert ranks[1]["writes"] == []  # the other process drew every grid and validation, and wrote nothing
    assert {f"{kind}-00000{s}.png" for s in (0, 1, 2) for kind in ("step", "val-step")} <= {
        p.name for p in (run / "samples").iterdir()
    }
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    plain_rows = [json.loads(line) for line in (plain / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and all("val/ink-coverage" in r for r in rows)

    a, b = (load_file(dump / f"rank{r}-step2.safetensors") for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a), "the LoRA differs between processes"
    saved = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    reference = load_file(plain / "lora" / "pytorch_lora_weights.safetensors")
    assert saved.keys() == reference.keys() == {f"transformer.{k}" for k in a}
    assert max(v.abs().max().item() for k, v in saved.items() if "lora_B" in k) > 1e-3  # it trained
    # The all-gathered weights are the plain ones, so step 1's gradient is the plain one up to the order
    # in which autograd sums a tensor's gradient contributions (FSDP2's hooks reorder it): float32
    # rounding (bitwise equal on this FLUX here; 2e-6 of the largest entry on tiny-random's UNet).
    g, plain_g = (load_file(dump / f"{p}rank0-grad1.safetensors") for p in ("", "plain-"))
    scale = max(v.abs().max().item() for v in plain_g.values())
    assert scale > 0 and all(torch.allclose(g[k], plain_g[k], rtol=0, atol=1e-5 * scale) for k in g)
    # Adam's update lr * g / (|g| + eps) turns a rounding difference of a gradient entry near eps into a
    # visible one, which step 2's gradient inherits, so the LoRA after 2 steps is held to 1% of its norm
    # (tiny-random's UNet: 0.2%); a wrong or stale shard changes every entry, by up to 2 * lr.
    flat = lambda state: torch.cat([state[k].flatten() for k in sorted(state)])  # noqa: E731
    assert (flat(saved) - flat(reference)).norm() <= 1e-2 * flat(reference).norm()
    for r, s in zip(rows, plain_rows):
        for key in ("reward_mean", "val/ink-coverage"):
            if key in s:
                assert abs(r[key] - s[key]) <= 1e-5 * abs(s[key]), (r["step"], key)


def test_an_fsdp_launch_refuses_what_it_cannot_shard():
    acc = SimpleNamespace(num_processes=2, distributed_type=SimpleNamespace(name="FSDP"), is_main_process=True)
    for sets, named in (
        (["estimator={name: draft-k, k_range: [1, 2]}"], "estimator.k_range"),
        (["estimator={name: refl, m: 5}"], "estimator.m=5"),
        (["model.quantize=int8"], "model.quantize='int8'"),
    ):
        trainer = SimpleNamespace(acc=acc, config=load_config(None, ["model.name=tiny-random-flux", *sets]))
        with pytest.raises(ConfigError, match=named):  # before any collective
            shard_under_fsdp(trainer)
    one = SimpleNamespace(acc=SimpleNamespace(num_processes=1, distributed_type=SimpleNamespace(name="FSDP")))
    assert shard_under_fsdp(one) is False  # one process: nothing to shard across
