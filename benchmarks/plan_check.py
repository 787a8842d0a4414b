"""``draft plan``'s predictions against the same training step on real CPU tensors.

    python benchmarks/plan_check.py [--models tiny-random digits] [--steps 50] [--batch 4] \\
        [--out benchmarks/results/plan_check.json]

For each model and estimator case of the benchmark suite (benchlib.CASES, with the suite's
reward and prompts), the prediction (``plan_step``: the step traced on the meta device) is
compared with a measured step (``measure_step``: a warm-up step, then the measured one, on real
tensors), in a fresh process per case with ``MALLOC_MMAP_THRESHOLD_=65536`` as benchlib's
memory probe uses. Two measurements of the same step:

- the tally of live tensor bytes (the same dispatch-mode tally, on real tensors): what the
  prediction claims to predict, total and above what was live before the step;
- the process's peak resident set size over the step above its size before it (benchlib's
  ``peak_memory``): real memory, with the allocator's and the interpreter's own overheads,
  which a tensor tally does not see (and a CUDA caching allocator would add differently).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from benchlib import CASE_MODELS, CASES, MMAP_ENV, MODELS, fit_to_steps, peak_memory, write_json

MiB = 2**20
ESTIMATOR_CASES = [c for c in CASES if CASES[c] is not None]


def case_config(model: str, case: str, steps: int, batch: int, lora_rank: int = 4):
    """The config of one benchmark case, as ``draft train`` would read it."""
    from draft_core.config import load_config

    spec = MODELS[model]
    sets = [
        f"model.name={model}",
        "sampler.name=ddim",
        f"sampler.steps={steps}",
        "sampler.guidance_scale=7.5",
        f"train.batch_size={batch}",
        f"lora.rank={lora_rank}",
        f"prompts.items={json.dumps(list(spec['prompts']))}",
        f"reward={json.dumps(spec['reward'])}",
        f"estimator={json.dumps(fit_to_steps(CASES[case], steps))}",
    ]
    return load_config(None, sets)


def measure_main(argv: list[str]) -> None:
    """One case, measured on real tensors in this process; prints one JSON line."""
    from draft_core.planning.step import measure_step

    ap = argparse.ArgumentParser(prog="plan_check.py measure")
    ap.add_argument("--model", required=True)
    ap.add_argument("--case", required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    trace = measure_step(
        case_config(a.model, a.case, a.steps, a.batch), "cpu", around=lambda step: peak_memory(step, "cpu")
    )
    print(
        json.dumps(
            {
                "peak_bytes": trace.peak,
                "start_bytes": trace.start,
                "breakdown": trace.breakdown,
                "flops": trace.flops,
                "rss_step_peak_mib": trace.extra["peak_mib"],
            }
        )
    )


def measure_in_subprocess(model: str, case: str, steps: int, batch: int) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "measure",
        "--model",
        model,
        "--case",
        case,
        "--steps",
        str(steps),
        "--batch",
        str(batch),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env={**os.environ, **MMAP_ENV})
    if done.returncode != 0:
        raise RuntimeError(f"measurement failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(model: str, case: str, steps: int, batch: int) -> dict:
    from draft_core.planning.step import plan_step

    predicted = plan_step(case_config(model, case, steps, batch), "cpu")
    measured = measure_in_subprocess(model, case, steps, batch)
    return {
        "predicted_mib": predicted.peak / MiB,
        "measured_tally_mib": measured["peak_bytes"] / MiB,
        "ratio": predicted.peak / measured["peak_bytes"],
        "predicted_step_mib": (predicted.peak - predicted.start) / MiB,
        "measured_tally_step_mib": (measured["peak_bytes"] - measured["start_bytes"]) / MiB,
        "measured_rss_step_mib": measured["rss_step_peak_mib"],
        "predicted_flops": predicted.flops,
        "measured_flops": measured["flops"],
        "cost_ratio": predicted.cost_ratio,
        "predicted_breakdown": predicted.breakdown,
        "measured_breakdown": measured["breakdown"],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--cases", nargs="+", default=ESTIMATOR_CASES, choices=ESTIMATOR_CASES)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = {}
    print(f"{a.steps} DDIM steps, batch {a.batch}, LoRA rank 4, CPU float32; MiB")
    print(
        f"{'model':12s} {'case':20s} {'predicted':>9s} {'tally':>9s} {'ratio':>6s}   "
        f"{'step: predicted':>15s} {'tally':>7s} {'RSS':>7s}"
    )
    for model in a.models:
        for case in a.cases:
            if model not in CASE_MODELS.get(case, (model,)):
                continue
            r = rows[f"{model} | {case}"] = compare(model, case, a.steps, a.batch)
            print(
                f"{model:12s} {case:20s} {r['predicted_mib']:9.2f} {r['measured_tally_mib']:9.2f} {r['ratio']:6.3f}   "
                f"{r['predicted_step_mib']:15.2f} {r['measured_tally_step_mib']:7.2f} {r['measured_rss_step_mib']:7.1f}",
                flush=True,
            )
    result = {"steps": a.steps, "batch": a.batch, "malloc": MMAP_ENV, "rows": rows}
    write_json(a.out, result)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["measure"]:
        measure_main(sys.argv[2:])
    else:
        main()
