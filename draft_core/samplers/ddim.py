"""DDIM sampling (eta = 0 by default: deterministic) through diffusers' own ``DDIMScheduler.step``.

With eta > 0 each step is a Gaussian (DDPO samples with eta = 1), exposed for policy-gradient
estimators by ``transition_distribution``.

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

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step_gaussian(self, sched, out, t, x):
        """DDIM's step is mean + std·z: the mean is the scheduler's own step with zero noise, and
        std = eta · sqrt(the scheduler's variance for (t, t_prev)), as its step computes it."""
        if self.eta == 0:
            return super().step_gaussian(sched, out, t, x)
        mean = sched.step(out, t, x, eta=self.eta, variance_noise=torch.zeros_like(x)).prev_sample
        prev_t = t - sched.config.num_train_timesteps // sched.num_inference_steps
        std = self.eta * sched._get_variance(t, prev_t) ** 0.5
        return mean, std.to(device=x.device)
