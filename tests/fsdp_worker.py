"""One process of tests/test_fsdp.py (torchrun, 2 gloo processes): the LoRA gradient of a DRaFT-1 step on
tiny-random-flux, computed on the plain model, then with the frozen base sharded (FSDP2); both written out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from draft_core.config import load_config
from draft_core.lora import add_lora
from draft_core.models.loading import load_model
from draft_core.plugins.protocols import StepInputs
from draft_core.training.components import build_components
from draft_core.training.fsdp import shard_frozen_base

SETS = ["model.name=tiny-random-flux", "sampler={name: euler, steps: 2, guidance_scale: 3.5}",
        "estimator={name: draft-k, k: 1}", "reward={name: ink-coverage, softness: 0.05}"]


def lora_gradient(model, params, c) -> torch.Tensor:
    cond = model.encode_prompts(["a cat", "a dog"])
    noise = model.make_noise(2, torch.Generator().manual_seed(0))
    c.estimator(StepInputs(model, c.sampler, c.reward, cond, noise, torch.Generator().manual_seed(1), None)).loss.backward()
    grad = torch.cat([p.grad.flatten() for p in params])
    for p in params:
        p.grad = None
    return grad


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = load_model("tiny-random-flux", "cpu")
    params = add_lora(model, rank=2, init=False)
    c = build_components(load_config(None, SETS))
    plain = lora_gradient(model, params, c)
    units = shard_frozen_base(model, params)
    frozen = [p for p in model.denoiser.parameters() if not p.requires_grad]
    local = sum(p.to_local().numel() for p in frozen)
    full = sum(p.numel() for p in frozen)
    sharded = lora_gradient(model, params, c)
    save_file({"plain": plain, "sharded": sharded}, str(out / f"rank{rank}.safetensors"))
    kinds = sorted({type(p).__name__ for p in frozen}) + sorted({type(p).__name__ for p in params})
    (out / f"rank{rank}.json").write_text(json.dumps({"units": units, "local": local, "full": full, "kinds": kinds}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
