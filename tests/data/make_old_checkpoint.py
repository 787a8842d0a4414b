"""How tests/data/old_checkpoint/ was made, with the code from before Trainer.state_dict() (issue 25):
a tiny-random run of one step (DDPO with its stored samples, a weight average, a learned guidance
schedule), then the reference: the same folder resumed for a second step by that code. Kept as a record;
running it again with today's code writes today's format, which is not what the test needs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from draft_core import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for its helper module
from old_checkpoint_files import split_optimizer  # noqa: E402

SETS = [
    "model.name=tiny-random",
    "prompts.source=animals",
    "sampler={name: ddim, steps: 2, eta: 1.0}",
    "estimator={name: ddpo, minibatches: 2, stat_min_count: 2}",
    "reward={name: jpeg-size}",
    "train.batch_size=2",
    "train.lr=0.01",
    "train.sample_every=0",
    "train.sample_prompts=[a cat]",
    "train.sample_per_prompt=1",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=1",
    "lora.rank=1",
    "train.ema.decay=0.8",
    "learn.guidance=true",
    "train.lr_schedule=cosine",
    "train.lr_warmup_steps=1",
]


def main(out: Path) -> None:
    torch.set_num_threads(1)
    run = out.parent / "old_checkpoint_run"
    shutil.rmtree(run, ignore_errors=True)
    sets = sum((["--set", s] for s in SETS), [])
    assert (
        cli.main(
            ["train", "--preset", "quickstart", "--no-progress", "--out", str(run), *sets, "--set", "train.steps=1"]
        )
        == 0
    )
    shutil.rmtree(out, ignore_errors=True)
    (out / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(run / name, out / name)
    shutil.copytree(run / "checkpoints" / "step-000001", out / "checkpoints" / "step-000001")
    # no pickle in the repository: the optimizer state as safetensors + JSON (tests/old_checkpoint_files.py)
    split_optimizer(out / "checkpoints" / "step-000001" / "optimizer.pt", out)
    (out / "checkpoints" / "step-000001" / "optimizer.pt").unlink()
    shutil.copy(run / "checkpoints" / "latest", out / "checkpoints" / "latest")
    # The reference: that code's second step after resuming.
    assert cli.main(["train", "--resume", str(run), "--set", "train.steps=2", "--no-progress"]) == 0
    row = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    expected = {f"lora/{k}": v for k, v in load_file(run / "lora" / "pytorch_lora_weights.safetensors").items()}
    expected.update(
        {f"lora_ema/{k}": v for k, v in load_file(run / "lora_ema" / "pytorch_lora_weights.safetensors").items()}
    )
    expected.update({f"guidance/{k}": v for k, v in load_file(run / "lora" / "sampler_params.safetensors").items()})
    save_file(expected, out / "expected_step2.safetensors")
    keep = ("step", "reward_mean", "loss", "grad_norm", "lr")
    (out / "expected_step2.json").write_text(json.dumps({k: row[k] for k in keep}, indent=1) + "\n")
    shutil.rmtree(run)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "old_checkpoint")
