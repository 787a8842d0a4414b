"""FLOP ratios of a training step to sampling alone on the tiny families, from ``draft plan``'s trace.

    python benchmarks/family_flops.py [--out benchmarks/results/flops_tiny_families.json]

Load-independent companion to step_cost.py's wall-clock ratios (which a loaded CPU blurs): the
same setting (50 steps of the family's default sampler, guidance 7.5, FLUX's distilled 3.5,
batch 4, LoRA rank 4, jpeg-compressibility), each step traced on the meta device as the CPU would
run it; cost_ratio = the step's FLOPs over those of sampling and decoding the same batch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchlib import write_json

MODELS = ["tiny-random-sdxl", "tiny-random-sd3", "tiny-random-flux"]
CASES = {
    "draft-k K=1": {"name": "draft-k", "k": 1},
    "draft-lv n=2": {"name": "draft-lv", "n": 2},
    "draft (full, ckpt)": {"name": "draft"},
}


def main(argv: list[str] | None = None) -> dict:
    from draft_core.config import load_config
    from draft_core.planning.step import plan_step

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    out = {}
    for m in a.models:
        for case, est in CASES.items():
            sampler = "ddim" if m.endswith("sdxl") else "euler"
            g = 3.5 if m.endswith("flux") else 7.5
            c = load_config(
                None,
                [
                    f"model.name={m}",
                    f"sampler.name={sampler}",
                    f"sampler.steps={a.steps}",
                    f"sampler.guidance_scale={g}",
                    "train.batch_size=4",
                    "lora.rank=4",
                    "reward.name=jpeg-compressibility",
                    f"estimator={json.dumps(est)}",
                ],
            )
            t0 = time.time()
            tr = plan_step(c, "cpu")
            out[f"{m} | {case}"] = {
                "flops": tr.flops,
                "sampling_flops": tr.sampling_flops,
                "cost_ratio": tr.cost_ratio,
                "peak": tr.peak,
                "activations": tr.breakdown["activations"],
                "seconds": time.time() - t0,
            }
            print(
                f"{m:18s} {case:20s} {tr.cost_ratio:6.3f}x sampling (FLOPs)  peak {tr.peak / 2**20:7.1f} MiB",
                flush=True,
            )
            write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
