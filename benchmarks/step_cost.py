"""Cost of one training step of each estimator relative to sampling alone, all cases interleaved.

    python benchmarks/step_cost.py [--model tiny-random|tiny-random-sdxl|tiny-random-sd3|tiny-random-flux|digits] [--steps 50] [--batch 4] [--rounds 5] [--cases ...] [--breakdown] [--history FILE]

The pytest-benchmark suite (``pytest benchmarks --benchmark-only``) pairs each case with
its own sampling run; this script instead runs every case once per round, rotating
the order, so that slow drifts in machine load fall on all cases alike. Each model samples with its
family's default sampler (DDIM for sd and sdxl, Euler flow matching for sd3 and flux). Ratios are
medians over rounds; the first round warms up and is dropped.

The speed guard: every run also times ``minimal DRaFT-1`` (benchlib.minimal_draft1: DRaFT-1 written
by hand on the same model, LoRA, reward and optimizer, with diffusers' scheduler and nothing of
draft's) interleaved with the rest, and prints draft's ``draft-k K=1`` over it: the overhead of
draft's sampler, estimator and wrappers, measured in one process so that machine load cancels.
``--history FILE`` appends that ratio (with the commit, date and load) as a JSON line; RESULTS.md
keeps the table. No test asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from benchlib import CASES, MODELS, make_bench, minimal_draft1, ratios, time_interleaved, write_json

MINIMAL = "minimal DRaFT-1"

DEFAULT_CASES = ["sampling", "draft-k K=1", "draft-lv n=2", "refl m=20", "draft-k K=10", "draft (full, ckpt)"]


def breakdown(bench, n: int = 2, rounds: int = 5) -> dict[str, float]:
    """Seconds of the pieces DRaFT-LV adds to DRaFT-1, interleaved: the UNet forward and
    backward of the n re-noised copies (with CFG), and their decode + reward forward and
    backward; beside one sampling step and one decode of the batch, for scale."""
    model, sampler = bench.model, bench.sampler
    inputs = bench.inputs(0)
    last = sampler.num_steps - 1
    x = inputs.noise.repeat(n, 1, 1, 1)
    cond = inputs.cond.repeat(n)

    def unet_copies():
        sampler.predict_x0(model, x, last, cond).sum().backward()

    def decode_reward_copies():
        y = x.clone().requires_grad_()
        bench.reward(model.decode(y), cond.prompts).sum().backward()

    def one_sampling_step():
        with torch.no_grad():
            sampler.predict_x0(model, inputs.noise, last, inputs.cond)

    def decode_batch():
        with torch.no_grad():
            model.decode(inputs.noise)

    parts = {
        "lv: unet fwd+bwd of n copies": unet_copies,
        "lv: decode+reward fwd+bwd of n copies": decode_reward_copies,
        "one sampling step (no grad)": one_sampling_step,
        "decode of the batch (no grad)": decode_batch,
    }
    times = {k: [] for k in parts}
    for r in range(rounds + 1):
        for k, f in parts.items():
            t0 = time.perf_counter()
            f()
            if r:
                times[k].append(time.perf_counter() - t0)
    for p in bench.params:
        p.grad = None
    return {k: statistics.median(v) for k, v in times.items()}


def draft1_parts(bench, rounds: int = 5) -> dict[str, float]:
    """Seconds of what DRaFT-1 adds to sampling, piece by piece, interleaved: the last sampling
    step with its graph and backward against the same step without, and the decode + reward
    with their backward against the same without. Their differences, over sampling's time, say
    whether the overhead is the denoiser's (which grows with the model) or the decode's and
    reward's (which a tiny denoiser makes large by comparison)."""
    model, sampler = bench.model, bench.sampler
    inputs = bench.inputs(0)
    last = sampler.num_steps - 1
    x = inputs.noise

    def step_grad():
        sampler.predict_x0(model, x, last, inputs.cond).sum().backward()

    def step_plain():
        with torch.no_grad():
            sampler.predict_x0(model, x, last, inputs.cond)

    def decode_reward_grad():
        y = x.clone().requires_grad_()
        bench.reward(model.decode(y), inputs.cond.prompts).sum().backward()

    def decode_reward_plain():
        with torch.no_grad():
            bench.reward(model.decode(x), inputs.cond.prompts)

    parts = {
        "denoiser step fwd+bwd": step_grad,
        "denoiser step fwd": step_plain,
        "decode+reward fwd+bwd": decode_reward_grad,
        "decode+reward fwd": decode_reward_plain,
    }
    times: dict[str, list[float]] = {k: [] for k in parts}
    for r in range(rounds + 1):
        for k, f in list(parts.items()) if r % 2 else list(parts.items())[::-1]:
            t0 = time.perf_counter()
            f()
            if r:
                times[k].append(time.perf_counter() - t0)
    for p in bench.params:
        p.grad = None
    return {k: statistics.median(v) for k, v in times.items()}


def checkpoint_cost(bench, cases: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each case with the decode and the reward checkpointed as by default
    (``auto``) and not at all (``off``), the four-or-more variants interleaved."""
    runners = {}
    for case in cases:
        estimator = bench.estimator(case)
        for mode, label in (("auto", "auto"), (False, "off")):

            def run(seed, estimator=estimator, mode=mode):
                bench.model.checkpoint_decode = bench.checkpoint_reward = mode
                return bench.train_step(estimator, seed)

            runners[f"{case} [checkpoint {label}]"] = run
    times = time_interleaved(bench, list(runners), rounds, runners=runners)
    bench.model.checkpoint_decode = bench.checkpoint_reward = "auto"
    return times


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-random", choices=sorted(MODELS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--cases",
        nargs="+",
        default=DEFAULT_CASES,
        choices=list(CASES),
        metavar="CASE",
        help=f"cases to time (default: {DEFAULT_CASES}); 'sampling' is always included",
    )
    ap.add_argument("--breakdown", action="store_true", help="also time the pieces DRaFT-LV (n=2) adds to DRaFT-1")
    ap.add_argument(
        "--draft1-parts",
        action="store_true",
        help="also time what DRaFT-1 adds to sampling: the denoiser's backward against the decode's and reward's",
    )
    ap.add_argument(
        "--checkpoint-cost",
        action="store_true",
        help="also time each training case with the decode and reward checkpointed (the default) and not",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the times and ratios as JSON here")
    ap.add_argument(
        "--history",
        type=Path,
        default=None,
        help="append the guard's ratio (draft-k K=1 / minimal DRaFT-1) to this JSON-lines file",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = ["sampling"] + [c for c in args.cases if c != "sampling"]
    if "draft-k K=1" not in cases:
        cases.append("draft-k K=1")
    bench = make_bench(args.model, args.steps, args.batch)
    runners = {case: bench.runner(case) for case in cases}
    runners[MINIMAL] = minimal_draft1(bench)
    cases.append(MINIMAL)
    load = os.getloadavg()[0]
    times = time_interleaved(bench, cases, args.rounds, runners=runners)
    rel = ratios(times)
    print(
        f"{args.model}, {args.steps} {bench.sampler_name} steps, guidance {bench.sampler.guidance_scale}, batch {args.batch}, "
        f"{torch.get_num_threads()} thread, "
        f"{args.rounds} rounds (+1 warm-up)"
    )
    for case in cases:
        print(f"  {case:20s} {statistics.median(times[case]):7.3f} s   {rel[case]:5.2f}x sampling")
    guard = rel["draft-k K=1"] / rel[MINIMAL]
    print(f"  guard: draft-k K=1 / {MINIMAL} = {guard:.3f} (load {load:.1f} -> {os.getloadavg()[0]:.1f})")
    if "draft-lv n=2" in rel:
        print(f"  draft-lv n=2 / draft-k K=1: {rel['draft-lv n=2'] / rel['draft-k K=1']:.2f}")
    result = {
        "model": args.model,
        "family": bench.model.family,
        "sampler": bench.sampler_name,
        "steps": args.steps,
        "batch": args.batch,
        "rounds": args.rounds,
        "seconds": times,
        "ratio_to_sampling": rel,
    }
    if args.breakdown:
        result["lv_breakdown_seconds"] = parts = breakdown(bench)
        sampling = statistics.median(times["sampling"])
        for k, v in parts.items():
            print(f"  {k:40s} {v:7.3f} s   {v / sampling:5.3f}x sampling")
    if args.draft1_parts:
        result["draft1_parts_seconds"] = parts = draft1_parts(bench, args.rounds)
        sampling = statistics.median(times["sampling"])
        den = parts["denoiser step fwd+bwd"] - parts["denoiser step fwd"]
        dec = parts["decode+reward fwd+bwd"] - parts["decode+reward fwd"]
        for k, v in parts.items():
            print(f"  {k:40s} {v:7.3f} s   {v / sampling:5.3f}x sampling")
        print(
            f"  DRaFT-1 over sampling: denoiser's backward {den / sampling:+.3f}x, decode's and reward's {dec / sampling:+.3f}x"
        )
        result["draft1_added"] = {"denoiser": den / sampling, "decode_reward": dec / sampling}
    if args.checkpoint_cost:
        trained = [c for c in cases if c not in ("sampling", MINIMAL)]
        ck = checkpoint_cost(bench, trained, args.rounds)
        result["checkpoint_seconds"] = ck
        for case in trained:
            on, off = (statistics.median(ck[f"{case} [checkpoint {m}]"]) for m in ("auto", "off"))
            print(f"  {case:20s} checkpointed decode/reward {on:7.3f} s, not {off:7.3f} s: {on / off:5.2f}x")
    result["guard_ratio"] = guard
    write_json(args.out, result)
    if args.history is not None:
        append_history(args.history, args, bench, guard, rel, load)
    return result


def append_history(path: Path, args, bench, guard: float, rel: dict[str, float], load: float) -> None:
    """One JSON line: when, which commit, the setting, the guard's ratio and DRaFT-1 / sampling."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
            ).stdout.strip()
            or None
        )
    except OSError:
        commit = None
    row = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "commit": commit,
        "model": args.model,
        "steps": args.steps,
        "batch": args.batch,
        "rounds": args.rounds,
        "load_start": round(load, 1),
        "load_end": round(os.getloadavg()[0], 1),
        "draft1_over_minimal": round(guard, 4),
        "draft1_over_sampling": round(rel["draft-k K=1"], 4),
        "minimal_over_sampling": round(rel[MINIMAL], 4),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
