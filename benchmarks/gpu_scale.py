"""Step time, peak GPU memory and the largest batch in a budget, per model family at its published scale.

    python benchmarks/gpu_scale.py --family sdxl [--batches 1 4] [--budget 80GiB] [--out results/gpu_scale_sdxl.json]
    python benchmarks/gpu_scale.py --family flux --tiny    # the same code on the tiny family, on CPU, in seconds

No weights are downloaded: the family's published architecture (draft_core/planning/published.py;
SD 1.4 for ``sd``) is built with random weights directly in bfloat16 on the GPU, at its native
resolution, with the reward HPSv2's architecture with random weights (gpu_sd14.HPSv2Sized).
Costs do not depend on the weights' values.

Setting: the family's default sampler, steps and guidance (``FAMILIES``), LoRA rank 32 in float32
on the family's default targets. Cases: sampling alone, DRaFT-1, DRaFT-LV (n = 2), DRaFT-K
(K = 10) and full DRaFT (every step checkpointed). Time: median of ``--rounds`` rounds, cases
interleaved (benchlib.time_interleaved), as a ratio to sampling alone. Memory: per case,
``torch.cuda.max_memory_allocated`` over one step (with the weights) and ``max_memory_reserved``
(what the caching allocator held: what must fit). Largest batch: per training case, the batch
doubled while a step's reserved peak stays within ``--budget``, then bisected between the last
that fit and the first that did not (an out-of-memory error counts as not fitting); on CPU
(``--tiny``) the step's own peak RSS above the loaded model is held against the budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from benchlib import peak_memory, write_json
from gpu_sd14 import HPSv2Sized, build_bench, measure_cases

CASES = ["sampling", "draft-k K=1", "draft-lv n=2", "draft-k K=10", "draft (full, ckpt)"]
GiB, MiB = 2**30, 2**20


@dataclass(frozen=True)
class Setting:
    name: str  # the published model draft plan knows by name
    tiny: str  # the embedded tiny model of the family
    steps: int  # the family pipeline's default number of steps
    guidance: float  # ... and guidance scale (FLUX.1-dev: the distilled guidance input)


FAMILIES = {
    "sd": Setting("CompVis/stable-diffusion-v1-4", "tiny-random", 50, 7.5),
    "sdxl": Setting("stabilityai/stable-diffusion-xl-base-1.0", "tiny-random-sdxl", 50, 5.0),
    "sd3": Setting("stabilityai/stable-diffusion-3.5-medium", "tiny-random-sd3", 28, 7.0),
    "flux": Setting("black-forest-labs/FLUX.1-dev", "tiny-random-flux", 28, 3.5),
}


def build_model(family: str, tiny: bool, device: torch.device, dtype: torch.dtype):
    """The family's tiny embedded model, or its published architecture with random weights."""
    from draft_core.models import load_model
    from draft_core.planning.architectures import build_sd14, published_model

    setting = FAMILIES[family]
    if tiny:
        return load_model(setting.tiny, device, dtype)
    return build_sd14(device, dtype) if family == "sd" else published_model(setting.name, device, dtype)


def largest_batch(fits: Callable[[int], bool], limit: int) -> int:
    """The largest batch b <= limit with fits(b), doubling from 1 and then bisecting; 0 when
    even batch 1 does not fit. Assumes that a batch fits when a larger one does."""
    if not fits(1):
        return 0
    good, bad = 1, None
    while bad is None and good < limit:
        b = min(2 * good, limit)
        good, bad = (b, None) if fits(b) else (good, b)
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def step_fits(
    make_run: Callable[[int], Callable[[], object]], device: torch.device, budget: int
) -> Callable[[int], bool]:
    """fits(batch): one step at that batch stays within ``budget`` bytes (module doc)."""

    def fits(batch: int) -> bool:
        try:
            run = make_run(batch)
            mem = peak_memory(run, device)
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        used = mem["reserved_peak_mib"] if device.type == "cuda" else mem["peak_mib"]
        return used * MiB <= budget

    return fits


def main(argv: list[str] | None = None) -> dict:
    from draft_core.planning.budget import parse_bytes

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", required=True, choices=list(FAMILIES))
    ap.add_argument("--tiny", action="store_true", help="the family's tiny model on CPU (a smoke run of this script)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default: 1 4 (tiny: 1)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the family's; tiny: 2)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    ap.add_argument("--budget", default=None, help="for the largest batch (default 80GiB; tiny: 64MiB of step peak)")
    ap.add_argument("--max-batch", type=int, default=64, help="the largest batch tried (0: no search)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args(argv)
    setting = FAMILIES[a.family]
    if a.tiny:
        torch.set_num_threads(1)  # on a shared CPU, more threads spin against the neighbours
        device, dtype, steps, batches = torch.device("cpu"), torch.float32, a.steps or 2, a.batches or [1]
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_scale.py needs a CUDA GPU at published scale; use --tiny for a CPU smoke run.")
        device, dtype, steps, batches = (
            torch.device("cuda"),
            torch.bfloat16,
            a.steps or setting.steps,
            a.batches or [1, 4],
        )
    budget = parse_bytes(a.budget or ("64MiB" if a.tiny else "80GiB"), "--budget")
    cases = ["sampling"] + [c for c in a.cases if c != "sampling"]
    t0 = time.perf_counter()
    model = build_model(a.family, a.tiny, device, dtype)
    reward = HPSv2Sized(a.tiny).to(device=device, dtype=dtype)

    def bench(batch: int):
        return build_bench(
            a.tiny,
            steps,
            batch,
            device,
            dtype,
            a.lora_rank,
            model=model,
            reward=reward,
            sampler=model.default_sampler,
            guidance=setting.guidance,
        )

    first = bench(batches[0])
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_modules().items()}
    result: dict = {
        "family": a.family,
        "model": setting.tiny if a.tiny else setting.name,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "sampler": model.default_sampler,
        "steps": steps,
        "guidance": setting.guidance,
        "lora_rank": a.lora_rank,
        "image_size": list(model.image_size),
        "params": params,
        "lora_params": sum(p.numel() for p in first.params),
        "budget_bytes": budget,
        "build_seconds": time.perf_counter() - t0,
        "batches": {},
        "largest_batch": {},
    }
    print(
        f"{result['model']} ({a.family}) on {result['device']}, {dtype}, {model.default_sampler} {steps} steps, "
        f"guidance {setting.guidance}, {result['image_size'][0]} px, LoRA rank {a.lora_rank}",
        flush=True,
    )
    for batch in batches:
        result["batches"][batch] = measure_cases(
            first if batch == batches[0] else bench(batch), cases, a.rounds, device
        )
    if a.max_batch:
        for case in cases[1:]:
            fits = step_fits(lambda batch, case=case: lambda r=bench(batch).runner(case): r(0), device, budget)
            result["largest_batch"][case] = largest_batch(fits, a.max_batch)
    print(markdown(result))
    write_json(a.out, result)
    return result


def markdown(result: dict) -> str:
    cuda = result["device"] != "cpu"
    head = (
        "| case | batch | step time | / sampling | peak allocated | peak reserved | largest batch in budget |"
        if cuda
        else "| case | batch | step time | / sampling | step peak RSS | largest batch in budget |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    budget = result["budget_bytes"]
    for batch, rows in result["batches"].items():
        for case, r in rows.items():
            largest = result["largest_batch"].get(case, "")
            largest = (
                f"{largest} (≤ {budget / (GiB if cuda else MiB):.0f} {'GiB' if cuda else 'MiB'})"
                if largest != ""
                else ""
            )
            mem = (
                f"{r['total_peak_mib'] / 1024:.1f} GiB | {r['reserved_peak_mib'] / 1024:.1f} GiB"
                if cuda
                else f"{r['peak_mib']:.1f} MiB"
            )
            lines.append(
                f"| {case} | {batch} | {r['median_s']:.2f} s | {r['ratio_to_sampling']:.2f}x | {mem} | {largest} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
