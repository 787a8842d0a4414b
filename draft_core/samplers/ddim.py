"""DDIM sampling (eta = 0 by default: deterministic) through diffusers' own ``DDIMScheduler.step``.

The scheduler is built from the model's scheduler config, so epsilon, v- and
sample-prediction, ``steps_offset`` and ``set_alpha_to_one`` follow the library.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from draft_core.errors import ConfigError
from draft_core.samplers.chain import ChainSampler


class DDIMSampler(ChainSampler):
    """DDIM with classifier-free guidance. eta > 0 adds DDIM's stochastic term."""

    scheduler_class = DDIMScheduler

    def __init__(self, steps: int = 50, guidance_scale: float = 7.5, eta: float = 0.0) -> None:
        super().__init__(steps, guidance_scale)
        if eta < 0:
            raise ConfigError(f"sampler.eta must be >= 0 (0 is deterministic DDIM), got {eta!r}.")
        self.eta = float(eta)

    def __repr__(self) -> str:
        return f"DDIMSampler(steps={self.num_steps}, guidance_scale={self.guidance_scale}, eta={self.eta})"

    def draw_step_noise(self, x, generator):
        if self.eta == 0:
            return None
        device = "cpu" if generator is None else generator.device
        return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)

    def scheduler_step(self, sched, out, t, x, noise):
        res = sched.step(out, t, x, eta=self.eta, variance_noise=noise)
        return res.prev_sample, res.pred_original_sample
