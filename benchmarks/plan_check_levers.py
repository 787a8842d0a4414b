"""``draft plan`` against the real step on CPU with each memory lever of issue 21 on and off.

    python benchmarks/plan_check_levers.py [--models tiny-random tiny-random-flux] [--out benchmarks/results/plan_check_levers.json]

For each tiny family and each setting (no lever; the denoiser block by block; the VAE decoder
block by block; the reward's own block checkpointing, an open_clip HPSv2 architecture of a small
size with random weights; all three; an int8 base; the text encoders off the device; all of
them), the prediction (``plan_step``: the step traced on the meta device as the CPU runs it)
against the same step on real tensors (``measure_step``: a warm-up step, then the measured one,
tallied the same way). DRaFT-1, 2 sampler steps, batch 2, LoRA rank 4, float32. The quantized
base's storage and the offloaded text encoders are offsets the plan applies to the traced step,
int8's kept weight copies are traced (draft_core/planning/levers.py); the measured step runs them
for real: torchao's int8 weights (tallied by their inner tensors: int8 values, scales, zero
points), and the encoders moved off the device after the prompts are encoded. On CPU the device
and the host are one, so for the measurement the encoders' home is the meta device (as
tests/test_offload.py does): a step that ran them would fail, and their bytes leave the CPU's
tally as they would leave a GPU's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch
from benchlib import write_json

MiB = 2**20
SMALL_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
NONE = [
    "train.checkpoint_denoiser=false",
    "train.checkpoint_decode=false",
    "train.checkpoint_reward=false",
    "model.quantize=none",
    "model.offload_text_encoders=false",
]
CHECKPOINTING = ["train.checkpoint_denoiser=blocks", "train.checkpoint_decode=true", "train.checkpoint_reward=true"]
SETTINGS = {
    "none": NONE,
    "denoiser blocks": NONE + ["train.checkpoint_denoiser=blocks"],
    "decoder blocks": NONE + ["train.checkpoint_decode=true"],
    "reward blocks": NONE + ["train.checkpoint_reward=true"],
    "all checkpointing": NONE + CHECKPOINTING,
    "int8 base": NONE + ["model.quantize=int8"],
    "encoders off": NONE + ["model.offload_text_encoders=true"],
    "all": NONE + CHECKPOINTING + ["model.quantize=int8", "model.offload_text_encoders=true"],
}
FAMILY_SAMPLER = {
    "tiny-random": ("ddim", 7.5),
    "tiny-random-sdxl": ("ddim", 7.5),
    "tiny-random-sd3": ("euler", 7.5),
    "tiny-random-flux": ("euler", 3.5),
}


def config_of(model: str, setting: str):
    from draft_core.config import load_config

    sampler, g = FAMILY_SAMPLER[model]
    return load_config(
        None,
        [
            f"model.name={model}",
            f"sampler.name={sampler}",
            "sampler.steps=2",
            f"sampler.guidance_scale={g}",
            "train.batch_size=2",
            "lora.rank=4",
            "prompts.items=[a cat, a dog]",
            'estimator={"name": "draft-k", "k": 1}',
            f"reward={json.dumps({'name': 'hpsv2', 'arch': SMALL_CLIP})}",
            *SETTINGS[setting],
        ],
    )


@contextlib.contextmanager
def encoders_home(device: str):
    """Where offloaded text encoders live during the measurement (the module doc says why meta)."""
    from draft_core.training import prompt_cache

    home, prompt_cache.HOME = prompt_cache.HOME, torch.device(device)
    try:
        yield
    finally:
        prompt_cache.HOME = home


def main(argv: list[str] | None = None) -> dict:
    from draft_core.planning.step import measure_step, plan_step

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny-random", "tiny-random-flux"], choices=list(FAMILY_SAMPLER))
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = {}
    print(
        f"{'model':18s} {'setting':16s} {'predicted':>9s} {'measured':>9s} {'ratio':>6s} {'activations':>11s} {'FLOP ratio':>10s}"
    )
    for model in a.models:
        for setting in a.settings:
            t0 = time.perf_counter()
            config = config_of(model, setting)
            p = plan_step(config, "cpu")
            with encoders_home("meta" if config.model.offload_text_encoders in (True, "true") else "cpu"):
                m = measure_step(config, "cpu", random_rewards=True)
            r = rows[f"{model} | {setting}"] = {
                "predicted_mib": p.peak / MiB,
                "measured_mib": m.peak / MiB,
                "ratio": p.peak / m.peak,
                "predicted_activations_mib": p.breakdown["activations"] / MiB,
                "measured_activations_mib": m.breakdown["activations"] / MiB,
                "flops_ratio": p.flops / m.flops,
                "cost_ratio": p.cost_ratio,
                "seconds": time.perf_counter() - t0,
            }
            print(
                f"{model:18s} {setting:16s} {r['predicted_mib']:9.2f} {r['measured_mib']:9.2f} {r['ratio']:6.3f} "
                f"{r['predicted_activations_mib']:11.2f} {r['flops_ratio']:10.3f}",
                flush=True,
            )
            write_json(a.out, {"rows": rows})
    return rows


if __name__ == "__main__":
    main()
