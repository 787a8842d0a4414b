"""Step cost of block checkpointing against none, DRaFT-1 on the tiny families, interleaved.

    python benchmarks/block_ckpt_cost.py [--models tiny-random tiny-random-flux] [--rounds 6] [--steps 10]

One DRaFT-1 training step (sampling without gradients, the last step differentiated, decode,
a small network reward, backward) with the denoiser's blocks checkpointed (diffusers' switch)
and without, alternated within each round so that machine load falls on both alike; the
median over rounds of time(blocks) / time(none), the first round dropped as a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from draft_core.lora import add_lora
from draft_core.models import load_model
from draft_core.plugins.protocols import StepInputs
from draft_estimators import TruncatedBackprop


class Pooled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 1)
        self.requires_grad_(False)

    def forward(self, images, prompts=()):
        return torch.tanh(self.fc(torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1))).squeeze(1)


def main(argv: list[str] | None = None) -> dict:
    from draft_core.samplers.ddim import DDIMSampler
    from draft_core.samplers.flow import EulerSampler

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models", nargs="+", default=["tiny-random", "tiny-random-sdxl", "tiny-random-sd3", "tiny-random-flux"]
    )
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for name in a.models:
        model = load_model(name, torch.device("cpu"), torch.float32)
        params = add_lora(model.denoiser, rank=4)
        sampler = (EulerSampler if model.flow_matching else DDIMSampler)(
            steps=a.steps, guidance_scale=3.5 if "flux" in name else 7.5
        )
        prompts = ["a cat", "a dog", "a fox", "a bird"][: a.batch]
        cond = model.encode_prompts(prompts)
        reward = Pooled()

        def step(on: bool) -> float:
            model.set_block_checkpointing(on)
            inputs = StepInputs(
                model,
                sampler,
                reward,
                cond,
                model.make_noise(a.batch, torch.Generator().manual_seed(0)),
                torch.Generator().manual_seed(1),
            )
            for p in params:
                p.grad = None
            t0 = time.perf_counter()
            TruncatedBackprop(k=1)(inputs).loss.backward()
            return time.perf_counter() - t0

        ratios = []
        for r in range(a.rounds):
            order = (True, False) if r % 2 else (False, True)
            t = {on: step(on) for on in order}
            if r:
                ratios.append(t[True] / t[False])
        out[name] = statistics.median(ratios)
        print(f"{name}: DRaFT-1 step, blocks / none = {out[name]:.3f}x (median of {len(ratios)} rounds)", flush=True)
    return out


if __name__ == "__main__":
    main()
