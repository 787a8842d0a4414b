"""``timestep_batch`` of the policy-gradient estimators (ddpo, grpo, mix-grpo): one training step
(sampling and the PPO update) with every trained step in its own denoiser call against the default
``auto`` (several steps per call while the call stays small), interleaved round by round in one
process so that the machine's load falls on both sides alike.

    python benchmarks/timestep_batch.py     # grpo, mix-grpo and ddpo on the embedded and tiny models
    python benchmarks/timestep_batch.py --rounds 2 --steps 3    # smoke size

Prints each side's median seconds per training step and auto's ratio to one step per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from toy import machine, make_trainer

#: (label, model, sampler section, estimator section, prompts per step)
CASES = [
    (
        "grpo, digits-flow, flow-sde",
        "digits-flow",
        {"name": "flow-sde", "eta": 0.7},
        {"name": "grpo", "group_size": 4},
        2,
    ),
    (
        "mix-grpo, digits-flow, flow-sde",
        "digits-flow",
        {"name": "flow-sde", "eta": 0.7},
        {"name": "mix-grpo", "group_size": 4},
        2,
    ),
    ("ddpo, digits, ddim eta 1", "digits", {"name": "ddim", "eta": 1.0}, {"name": "ddpo"}, 8),
    (
        "grpo, tiny-random-sd3, flow-sde",
        "tiny-random-sd3",
        {"name": "flow-sde", "eta": 0.7},
        {"name": "grpo", "group_size": 4},
        1,
    ),
    ("ddpo, tiny-random, ddim eta 1", "tiny-random", {"name": "ddim", "eta": 1.0}, {"name": "ddpo"}, 4),
]


def settings(model: str, sampler: dict, estimator: dict, batch: int, steps: int, timestep_batch) -> dict:
    return {
        "model": {"name": model},
        "lora": {"rank": 4},
        "sampler": {"steps": steps, **sampler},
        "estimator": {**estimator, "timestep_batch": timestep_batch},
        "reward": {"name": "jpeg-size"},
        "prompts": {"source": "digits"},
        "train": {"steps": 10**6, "batch_size": batch, "lr": 1e-3, "sample_every": 0, "checkpoint_every": 10**6},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="sampler steps (every one trained)")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds after one warm-up round")
    parser.add_argument("--only", nargs="*", help="labels (or their first word) of the cases to run")
    parser.add_argument("--json", help="write the result here")
    a = parser.parse_args(argv)
    result = {"steps": a.steps, "rounds": a.rounds, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, sampler, estimator, batch in CASES:
            if a.only and not any(label == o or label.split(",")[0] == o for o in a.only):
                continue
            sides = {
                size: make_trainer(
                    settings(model, sampler, estimator, batch, a.steps, size), Path(tmp) / f"{label}-{size}"
                )
                for size in (1, "auto")
            }
            times = {size: [] for size in sides}
            for r in range(a.rounds + 1):
                order = list(sides) if r % 2 else list(sides)[::-1]
                for size in order:
                    t0 = time.perf_counter()
                    sides[size].train_step()
                    if r:
                        times[size].append(time.perf_counter() - t0)
            medians = {str(size): statistics.median(ts) for size, ts in times.items()}
            result["cases"][label] = {**medians, "ratio": medians["auto"] / medians["1"]}
            print(
                f"{label}: timestep_batch 1 {medians['1']:.3f} s, auto {medians['auto']:.3f} s per step "
                f"({result['cases'][label]['ratio']:.2f}x)",
                flush=True,
            )
    result["machine"] = machine()
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
