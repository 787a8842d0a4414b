"""Cost of one training step of each estimator relative to sampling alone, all cases interleaved.

    python benchmarks/step_cost.py [--model tiny-random] [--steps 50] [--batch 4] [--rounds 5] [--cases ...]

The pytest-benchmark suite (``pytest benchmarks --benchmark-only``) pairs each case with
its own sampling run; this script instead runs every case once per round, rotating
the order, so that slow drifts in machine load fall on all cases alike. Ratios are
medians over rounds; the first round warms up and is dropped.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from benchlib import CASES, MODELS, make_bench, ratios, time_interleaved, write_json

DEFAULT_CASES = ["sampling", "draft-k K=1", "draft-lv n=2", "refl m=20", "draft-k K=10", "draft (full, ckpt)"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-random", choices=sorted(MODELS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES), metavar="CASE",
                    help=f"cases to time (default: {DEFAULT_CASES}); 'sampling' is always included")
    ap.add_argument("--out", type=Path, default=None, help="write the times and ratios as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = ["sampling"] + [c for c in args.cases if c != "sampling"]
    bench = make_bench(args.model, args.steps, args.batch)
    times = time_interleaved(bench, cases, args.rounds)
    rel = ratios(times)
    print(f"{args.model}, {args.steps} DDIM steps, CFG 7.5, batch {args.batch}, {torch.get_num_threads()} thread, "
          f"{args.rounds} rounds (+1 warm-up)")
    for case in cases:
        print(f"  {case:20s} {statistics.median(times[case]):7.3f} s   {rel[case]:5.2f}x sampling")
    if "draft-k K=1" in rel and "draft-lv n=2" in rel:
        print(f"  draft-lv n=2 / draft-k K=1: {rel['draft-lv n=2'] / rel['draft-k K=1']:.2f}")
    result = {"model": args.model, "steps": args.steps, "batch": args.batch, "rounds": args.rounds,
              "seconds": times, "ratio_to_sampling": rel}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
