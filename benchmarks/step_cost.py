"""Cost of one training step of each estimator relative to sampling alone, interleaved.

    python benchmarks/step_cost.py [--steps 50] [--batch 4] [--repeats 5]

Each round times plain no-grad sampling and then one step (forward + backward) of each
estimator on the same model, so machine noise hits all sides alike; the ratios are
medians over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from draft_core.lora import add_lora
from draft_core.models import load_model
from draft_core.protocols import StepInputs
from draft_core.samplers.ddim import DDIMSampler
from draft_estimators import FullBackprop, LowVariance, ReFL, TruncatedBackprop
from draft_rewards.jpeg import JpegCompressibility


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model = load_model(args.model)
    params = add_lora(model.unet, rank=4)
    sampler = DDIMSampler(steps=args.steps)
    reward = JpegCompressibility()
    prompts = ["a photo of a cat"] * args.batch
    estimators = {
        "draft-k K=1": TruncatedBackprop(k=1),
        "draft-lv n=2": LowVariance(n=2),
        "refl m=20": ReFL(m=min(20, args.steps)),
        "draft-k K=10": TruncatedBackprop(k=min(10, args.steps)),
        "draft (full, ckpt)": FullBackprop(),
    }
    times: dict[str, list[float]] = {"sampling": [], **{k: [] for k in estimators}}
    for r in range(args.repeats + 1):  # round 0 warms up
        gen = torch.Generator().manual_seed(r)
        cond = model.encode_prompts(prompts)
        noise = model.make_noise(args.batch, gen)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.decode(sampler.sample(model, cond, noise))
        if r:
            times["sampling"].append(time.perf_counter() - t0)
        for name, est in estimators.items():
            t0 = time.perf_counter()
            out = est(StepInputs(model, sampler, reward, model.encode_prompts(prompts), noise, gen))
            out.loss.backward()
            for p in params:
                p.grad = None
            if r:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["sampling"])
    print(f"{args.model}, {args.steps} DDIM steps, CFG, batch {args.batch}, {torch.get_num_threads()} threads")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:20s} {med:7.3f} s   {med / base:5.2f}x sampling")


if __name__ == "__main__":
    main()
