"""Issue 21's targets: ``draft plan`` at the published sizes with the memory levers, on CUDA.

    python benchmarks/plan_levers.py [--rows ...] [--out benchmarks/results/plan_levers.json]
    python benchmarks/plan_levers.py --markdown --out benchmarks/results/plan_levers.json

Each row is one config traced on the meta device (nothing downloaded: the published
architectures with meta weights): 1024 px, DRaFT-1, batch 1, HPSv2 (bfloat16 on CUDA, its
open_clip blocks checkpointed), LoRA rank 32, weights in bfloat16, each family's default sampler
settings (gpu_scale.FAMILIES), the levers at their defaults (``auto``: block checkpointing of the
denoiser and the decoder, text encoders off the device where they weigh 1 GiB or more) plus the
row's own settings. ``... no levers`` rows turn the denoiser's checkpointing and the offload off
(the decode and reward checkpointing on, as before issue 21), for the step cost of the blocks
(FLOPs of the step over sampling alone). A row traces in minutes at these sizes on a loaded CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchlib import write_json

GiB = 2**30
DRAFT_1 = [
    'estimator={"name": "draft-k", "k": 1}',
    "reward.name=hpsv2",
    "lora.rank=32",
    "model.dtype=bfloat16",
    "train.checkpoint_decode=auto",
    "train.checkpoint_reward=auto",
]
OFF = [
    "train.checkpoint_denoiser=false",
    "model.offload_text_encoders=false",
    "train.checkpoint_decode=true",
    "train.checkpoint_reward=true",
]
#: label -> (family, batch, overrides, target GiB or None)
ROWS = {
    "FLUX.1-dev, nf4 base": ("flux", 1, ["model.quantize=nf4"], 24),
    "FLUX.1-dev, bf16 base": ("flux", 1, [], 40),
    "SD3.5-medium": ("sd3", 1, [], 16),
    "SDXL": ("sdxl", 1, [], 16),
    "SDXL, batch 4": ("sdxl", 4, [], 24),
    "SD 1.4 512 px, DRaFT-LV n=2, batch 4": ("sd", 4, ['estimator={"name": "draft-lv", "n": 2}'], 10),
    "FLUX.1-dev, bf16 base, no levers": ("flux", 1, OFF, None),
    "SDXL, no levers": ("sdxl", 1, OFF, None),
}


def row_config(family: str, batch: int, extra: list[str]):
    from gpu_scale import FAMILIES

    from draft_core.config import load_config

    s = FAMILIES[family]
    sampler = "ddim" if family in ("sd", "sdxl") else "euler"
    return load_config(
        None,
        [
            f"model.name={s.name}",
            f"sampler.name={sampler}",
            f"sampler.steps={s.steps}",
            f"sampler.guidance_scale={s.guidance}",
            f"train.batch_size={batch}",
            *DRAFT_1,
            *extra,
        ],
    )


#: the same settings before issue 21 (the tables of docs/memory.md, traced then)
BEFORE = {
    "FLUX.1-dev, bf16 base": "93.4 GiB",
    "SD3.5-medium": "46.6 GiB",
    "SDXL": "35.7 GiB",
    "SDXL, batch 4": "81.7 GiB",
    "SD 1.4 512 px, DRaFT-LV n=2, batch 4": "14.9 GiB",
}


def markdown(rows: dict) -> str:
    lines = [
        "| config | before issue 21 | target | predicted peak | base weights | activations at peak | step cost / sampling (FLOPs) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, (_, _, _, target) in ROWS.items():
        r = rows.get(label)
        if target is None and r is None:
            continue
        aim = f"≤ {target} GiB" if target else "—"
        if r is None:
            lines.append(f"| {label} | {BEFORE.get(label, '—')} | {aim} | not traced yet | | | |")
            continue
        ok = "" if not target else (" ✓" if r["peak_gib"] <= target else " ✗")
        lines.append(
            f"| {label} | {BEFORE.get(label, '—')} | {aim} | {r['peak_gib']:.1f} GiB{ok} | {r['base_gib']:.1f} GiB | "
            f"{r['activations_gib']:.1f} GiB | {r['cost_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from draft_core.planning.step import plan_step

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--markdown", action="store_true", help="only print the table of the rows in --out")
    a = ap.parse_args(argv)
    old = json.loads(a.out.read_text()) if a.out and a.out.exists() else {"rows": {}}
    if a.markdown:
        print(markdown(old["rows"]))
        return old
    for label in a.rows:
        family, batch, extra, target = ROWS[label]
        t0 = time.perf_counter()
        trace = plan_step(row_config(family, batch, extra), "cuda")
        old["rows"][label] = {
            "family": family,
            "batch": batch,
            "set": extra,
            "target_gib": target,
            "peak_gib": trace.peak / GiB,
            "base_gib": trace.breakdown["base weights"] / GiB,
            "activations_gib": trace.breakdown["activations"] / GiB,
            "breakdown_bytes": trace.breakdown,
            "cost_ratio": trace.cost_ratio,
            "notes": trace.notes,
            "trace_seconds": time.perf_counter() - t0,
        }
        print(
            f"{label}: {trace.peak / GiB:.2f} GiB, cost {trace.cost_ratio:.2f}x ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        write_json(a.out, old)
    print(markdown(old["rows"]))
    return old


if __name__ == "__main__":
    main()
