"""Ancestral (DDPM) sampling through diffusers' own ``DDPMScheduler.step``.

Each step adds fresh noise. The step's noise comes from a generator seeded with a
number drawn before the step, so a checkpointed step recomputes the same noise.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from draft_core.samplers.chain import ChainSampler


class DDPMSampler(ChainSampler):
    """DDPM ancestral sampling with classifier-free guidance (paper A.1: results similar to DDIM)."""

    scheduler_class = DDPMScheduler

    def draw_step_noise(self, x, generator):
        return int(torch.randint(2**62, (1,), generator=generator).item())

    def scheduler_step(self, sched, out, t, x, noise):
        gen = torch.Generator(device="cpu").manual_seed(noise) if noise is not None else None
        if gen is not None and x.device.type != "cpu":
            gen = torch.Generator(device=x.device).manual_seed(noise)
        res = sched.step(out, t, x, generator=gen)
        return res.prev_sample, res.pred_original_sample
