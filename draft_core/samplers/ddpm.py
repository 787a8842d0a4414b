"""Ancestral (DDPM) sampling through diffusers' own ``DDPMScheduler.step``.

Each step adds fresh noise. The step's noise comes from a generator seeded with a
number drawn before the step, so a checkpointed step recomputes the same noise. Each
step's Gaussian is exposed for policy-gradient estimators by ``transition_distribution``.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from draft_core.errors import ConfigError
from draft_core.samplers.chain import ChainSampler


class DDPMSampler(ChainSampler):
    """DDPM ancestral sampling with classifier-free guidance (paper A.1: results similar to DDIM)."""

    scheduler_class = DDPMScheduler
    stochastic = True

    def draw_step_noise(self, x, generator):
        return int(torch.randint(2**62, (1,), generator=generator).item())

    def scheduler_step(self, sched, out, t, x, noise):
        gen = torch.Generator(device="cpu").manual_seed(noise) if noise is not None else None
        if gen is not None and x.device.type != "cpu":
            gen = torch.Generator(device=x.device).manual_seed(noise)
        res = sched.step(out, t, x, generator=gen)
        return res.prev_sample, res.pred_original_sample

    def step_gaussian(self, sched, out, t, x):
        """The posterior N(mean, std²) that ``DDPMScheduler.step`` samples (DDPM's formula 7).

        x̂0 comes from the scheduler's own step (prediction type, clipping, thresholding); the
        step's noise is drawn from a throwaway generator, so the global random stream is left
        alone. The coefficients repeat diffusers' expressions (tests/test_policy_samplers.py
        checks mean + std·z against its step). Where the variance is 0 (the last step, with
        ``fixed_small``), diffusers clamps it to 1e-20 and adds 1e-10·z: std = 0 here, no density.
        """
        variance_type = sched.config.variance_type
        if variance_type not in ("fixed_small", "fixed_large"):
            raise ConfigError(
                f"the ddpm sampler's step densities support the scheduler's variance_type fixed_small or "
                f"fixed_large, but this model's scheduler uses {variance_type!r}; use the ddim sampler with eta > 0."
            )
        throwaway = torch.Generator(device=x.device).manual_seed(0)
        x0 = sched.step(out, t, x, generator=throwaway).pred_original_sample
        prev_t = sched.previous_timestep(t)
        alpha_prod_t = sched.alphas_cumprod[t]
        alpha_prod_t_prev = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.one
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t
        x0_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        mean = x0_coeff * x0 + sample_coeff * x
        # The step adds noise only for t > 0, with the scheduler's own variance; that variance is
        # clamped to 1e-20 where it is exactly 0 (no previous timestep): such a step has no density.
        variance = sched._get_variance(t) if t > 0 else torch.zeros(())
        variance = torch.where(variance > 1e-20, variance, torch.zeros_like(variance))
        return mean, (variance**0.5).to(device=x.device)
