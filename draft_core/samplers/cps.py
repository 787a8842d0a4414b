r"""``cps``: Coefficients-Preserving Sampling (Wang et al. 2025, arXiv 2509.05952), a stochastic flow sampler.

A flow model's sample at noise level σ is x_σ = (1 − σ)·x0 + σ·ε. ``flow-sde``'s Euler–Maruyama step
adds more noise than the step removes at the high-noise steps (its first step's output has variance
about 1 + eta⁴/4 instead of ~1), so its samples carry excess noise that the reward then sees. CPS
writes the step so that the coefficients stay exact, as DDIM with eta does for diffusion models::

    x̂0 = x_t − σ_t·v,   x̂1 = x_t + (1 − σ_t)·v           (the predicted clean image and noise)
    s   = σ_s·sin(eta·π/2)                                  (the step's noise, σ_s the next level)
    x_s = (1 − σ_s)·x̂0 + √(σ_s² − s²)·x̂1 + s·z,   z ~ N(0, I)

a Gaussian with mean (1 − σ_s)·x̂0 + σ_s·cos(eta·π/2)·x̂1 and std s, a scalar per step. Where x̂0
and x̂1 are right, x_s = (1 − σ_s)·x0 + σ_s·ε' with ε' standard normal again: the coefficient of x0
and the noise's variance are exactly those of level σ_s, whatever eta and the step size
(tests/test_sampler_cps.py checks this in closed form). eta = 0 is the Euler step (the ODE, as
``euler``), eta = 1 re-noises the prediction completely ((1 − σ_s)·x̂0 + σ_s·z). The last step
(σ_s = 0) has s = 0: it draws no noise and is not trained on by the policy-gradient estimators.

Parity with the reference code (flow_grpo's ``sde_type='cps'``, whose README recommends eta, its
``noise_level``, = 0.8, the default here): its log-probability drops every constant,
logp = −mean((x_s − μ)²), so its PPO log-ratio is 2s² times the true Gaussian one used here, and a
``clip_range`` tuned there does not carry over (the SDK's log-probability is the exact Gaussian
density, mean over elements, as for every sampler).
"""

from __future__ import annotations

import math

from draft_core.errors import ConfigError
from draft_core.models.family import upcast
from draft_core.samplers.flow import FlowSDESampler


class CPSSampler(FlowSDESampler):
    """Coefficients-Preserving Sampling (module docstring); eta in [0, 1], 0.8 by default."""

    name = "cps"

    def __init__(self, steps: int = 50, guidance_scale: float = 7.5, eta: float = 0.8) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
            raise ConfigError(
                f"sampler.eta must be a number in [0, 1] for cps (the step's noise is σ·sin(eta·π/2); "
                f"0 is the ODE, 1 re-noises fully; the reference's default is 0.8), got {eta!r}."
            )
        super().__init__(steps, guidance_scale, eta)

    def __repr__(self) -> str:
        return f"CPSSampler(steps={self.num_steps}, guidance_scale={self.guidance_scale}, eta={self.eta})"

    def _gaussian(self, sched, out, i, x):
        """(mean, std, σ_t) of step ``i`` from velocity ``out``; std is 0-d (0 at the last step and for eta = 0)."""
        x = upcast(x)
        sigma, _ = self._sigmas(sched, i, x)
        sigma_next = sched.sigmas[i + 1].to(x.device, x.dtype)
        x0_hat, x1_hat = x - sigma * out, x + (1 - sigma) * out
        # √(σ_s² − s²) = σ_s·cos(eta·π/2), written so that rounding cannot make it the root of a negative number.
        mean = (1 - sigma_next) * x0_hat + sigma_next * math.cos(self.eta * math.pi / 2) * x1_hat
        std = sigma_next * math.sin(self.eta * math.pi / 2)
        return mean, std, sigma
