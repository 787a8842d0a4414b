"""``draft plan``'s predicted peak against ``torch.cuda.max_memory_allocated`` at SD 1.4 scale.

    python benchmarks/gpu_plan_check.py [--batches 1 4] [--predicted results/plan_sd14.json] \\
        [--out benchmarks/results/gpu_plan_check.json]
    python benchmarks/gpu_plan_check.py --tiny      # the same code on tiny models, on CPU, in seconds

Cases: DRaFT-1, DRaFT-LV (n = 2) and full DRaFT (UNet steps checkpointed), 50 DDIM steps,
guidance 7.5, LoRA rank 32, base weights in bfloat16, HPSv2's architecture (open_clip
ViT-H-14) as the reward; SD 1.4's UNet, VAE and text encoder from their published configs. No
weights are downloaded: the measured run builds every network with random weights on the GPU
(costs do not depend on the values), the prediction builds them on the meta device.

Per case: the prediction (``plan_step``, device type cuda; or read from ``--predicted``, a JSON
written by plan_sd14_table.py, to spend GPU time on measuring only), and the measured step
(``measure_step``: a warm-up step, then the measured one) with three figures: the same tally
of live tensor bytes on real CUDA tensors, ``torch.cuda.max_memory_allocated`` over the step
(with everything on the device: the allocator rounds each block up to 512 bytes and counts
cuBLAS/cuDNN workspaces allocated through it) and ``max_memory_reserved`` (what the caching
allocator held: what must fit in the card).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from benchlib import peak_memory, write_json

CASES = {
    "DRaFT-1": {"name": "draft-k", "k": 1},
    "DRaFT-LV n=2": {"name": "draft-lv", "n": 2},
    "full DRaFT": {"name": "draft"},
}
# HPSv2's scoring on a small open_clip architecture (for --tiny).
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "image_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PROMPTS = [
    "a photo of a corgi wearing a red scarf",
    "an oil painting of a lighthouse at dawn",
    "a raccoon washing dishes",
    "a watercolor of a mountain village",
]
GiB = 2**30


def case_config(case: str, batch: int, tiny: bool, steps: int, lora_rank: int):
    from draft_core.config import load_config

    reward = {"name": "hpsv2", **({"arch": TINY_CLIP} if tiny else {})}
    sets = [
        f"model.name={'tiny-random' if tiny else 'CompVis/stable-diffusion-v1-4'}",
        f"model.dtype={'float32' if tiny else 'bfloat16'}",
        f"sampler.steps={steps}",
        "sampler.guidance_scale=7.5",
        f"lora.rank={lora_rank}",
        f"train.batch_size={batch}",
        f"prompts.items={json.dumps(PROMPTS)}",
        f"reward={json.dumps(reward)}",
        f"estimator={json.dumps(CASES[case])}",
    ]
    return load_config(None, sets)


def cuda_probe(step) -> dict:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return {"max_allocated": torch.cuda.max_memory_allocated(), "max_reserved": torch.cuda.max_memory_reserved()}


def measure(config, tiny: bool) -> dict:
    from draft_core.planning.architectures import build_sd14
    from draft_core.planning.step import measure_step

    if tiny:
        trace = measure_step(config, "cpu", around=lambda step: peak_memory(step, "cpu"), random_rewards=True)
        return {"tally": trace.peak, "tally_step": trace.peak - trace.start, "rss_step_mib": trace.extra["peak_mib"]}
    trace = measure_step(
        config, "cuda", model_factory=lambda: build_sd14("cuda", torch.bfloat16), around=cuda_probe, random_rewards=True
    )
    return {"tally": trace.peak, "tally_step": trace.peak - trace.start, **trace.extra}


def main(argv: list[str] | None = None) -> dict:
    from draft_core.planning.step import plan_step

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models on CPU (a smoke run of this script)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 4 (tiny: 1 2)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50; tiny 2)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--predicted", type=Path, default=None, help="predictions from plan_sd14_table.py (full scale)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.tiny:
        torch.set_num_threads(1)
        batches, steps, rank, device_type = a.batches or [1, 2], a.steps or 2, 4, "cpu"
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_plan_check.py needs a CUDA GPU at full scale; use --tiny for a CPU smoke run.")
        batches, steps, rank, device_type = a.batches or [1, 4], a.steps or 50, 32, "cuda"
    known = json.loads(a.predicted.read_text())["rows"] if a.predicted else {}
    rows = {}
    for batch in batches:
        for case in a.cases:
            config = case_config(case, batch, a.tiny, steps, rank)
            key = f"{case} | hpsv2 | batch {batch}"
            predicted = known.get(key, {}).get("peak_bytes")
            if predicted is None:
                predicted = plan_step(config, device_type).peak
            m = measure(config, a.tiny)
            row = {"predicted": predicted, **m, "ratio_to_tally": predicted / m["tally"]}
            if "max_allocated" in m:
                row["ratio_to_max_allocated"] = predicted / m["max_allocated"]
                row["ratio_to_max_reserved"] = predicted / m["max_reserved"]
            rows[key] = row
            extra = (
                f"  max_allocated {m['max_allocated'] / GiB:6.2f} GiB ({row['ratio_to_max_allocated']:.3f}), "
                f"reserved {m['max_reserved'] / GiB:6.2f} GiB"
                if "max_allocated" in m
                else f"  step: tally {m['tally_step'] / 2**20:7.2f} MiB, RSS {m['rss_step_mib']:7.2f} MiB"
            )
            print(
                f"{key:32s} predicted {predicted / GiB:7.3f} GiB, tally {m['tally'] / GiB:7.3f} GiB "
                f"({row['ratio_to_tally']:.3f}){extra}",
                flush=True,
            )
    result = {
        "device": torch.cuda.get_device_name() if not a.tiny else "cpu",
        "steps": steps,
        "lora_rank": rank,
        "rows": rows,
    }
    write_json(a.out, result)
    return result


if __name__ == "__main__":
    main()
