"""What DOODL costs relative to plain sampling, measured in one process with the runs interleaved.

    python benchmarks/doodl_cost.py [--model digits] [--steps 20] [--doodl-steps 20] [--batch 4] [--repeats 3] [--out FILE]

Each repeat times one plain batch and one DOODL batch (same prompts and noise) back to
back, so load from other processes hits both alike; the ratio of the summed times is the
cost. The paper (Appendix A.3) reports about 60x for 20 Adam steps on Stable Diffusion.
Also reported: DOODL's mean reward before and after optimisation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from draft_core.evaluation.baselines import DOODL, NoiseSource, Plain, build_reward
from draft_core.models.loading import load_model
from draft_core.samplers.ddim import DDIMSampler


def measure(model: str, steps: int, doodl_steps: int, batch: int, repeats: int, reward: str, lr: float) -> dict:
    m = load_model(model, "cpu")
    sampler = DDIMSampler(steps=steps, guidance_scale=7.5)
    r = build_reward(reward)
    prompts = [f"a handwritten digit {w}" for w in ("zero", "one", "two", "three", "four", "five", "six", "seven")][
        :batch
    ]
    plain, doodl = Plain(), DOODL(r, steps=doodl_steps, lr=lr)
    Plain().generate(m, sampler, prompts[:1], NoiseSource.per_item(m, [0]))  # warm-up
    times = {"plain": 0.0, "doodl": 0.0}
    before, after = [], []
    for k in range(repeats):
        noise = NoiseSource.per_item(m, list(range(k * batch, (k + 1) * batch)))
        t0 = time.perf_counter()
        plain.generate(m, sampler, prompts, noise)
        times["plain"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        out = doodl.generate(m, sampler, prompts, noise)
        times["doodl"] += time.perf_counter() - t0
        before.append(out.info["reward_history"][0].mean().item())
        after.append(out.info["reward_history"][-1].mean().item())
    return {
        "model": model,
        "sampler_steps": steps,
        "doodl_steps": doodl_steps,
        "lr": lr,
        "batch": batch,
        "repeats": repeats,
        "reward": reward,
        "torch_threads": torch.get_num_threads(),
        "seconds_plain": times["plain"],
        "seconds_doodl": times["doodl"],
        "cost_ratio": times["doodl"] / times["plain"],
        "reward_before": sum(before) / len(before),
        "reward_after": sum(after) / len(after),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--reward", default="digit-classifier:target=8")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--doodl-steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    result = measure(a.model, a.steps, a.doodl_steps, a.batch, a.repeats, a.reward, a.lr)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
