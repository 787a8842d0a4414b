"""FSDP2 on the frozen base (draft_core.training.fsdp), on 2 CPU processes (gloo) launched with torchrun:
each process holds half of every frozen weight, the LoRA stays a plain replicated tensor, and the LoRA
gradient of a DRaFT-1 step equals the unsharded model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

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

