"""ReFL (Xu et al., 2023) in the DRaFT framework: stop at a random late step, score x̂0.

Algorithm 1 with t_truncate = randint(1, m): sampling runs without autograd until that
step, then the one-step prediction x̂0 = (x_t − σ_t ε̂)/α_t is made with gradient and
scored; the rest of the chain is skipped. With m = 1 this is DRaFT-1 whenever the final
DDIM step lands exactly on x̂0 (``set_alpha_to_one=True``).
"""

from __future__ import annotations

import torch

from draft_core.errors import ConfigError
from draft_core.plugins.bases import EstimatorBase
from draft_core.plugins.protocols import StepInputs
from draft_estimators.truncated import reward_loss


class ReFL(EstimatorBase):
    """m: the truncation step t is uniform in [1, m], counted back from the last step."""

    def __init__(self, m: int = 20) -> None:
        if not isinstance(m, int) or m < 1:
            raise ConfigError(f"estimator.m must be a positive integer, got {m!r}.")
        self.m = m

    def __repr__(self) -> str:
        return f"ReFL(m={self.m})"

    def differentiated_steps(self, num_steps: int) -> range:
        return range(num_steps - self.m, num_steps)

    def check(self, sampler) -> None:
        if self.m > sampler.num_steps:
            raise ConfigError(
                f"estimator.m={self.m} exceeds sampler.steps={sampler.num_steps}; use 1 <= m <= {sampler.num_steps}."
            )

    def __call__(self, inputs: StepInputs):
        self.check(inputs.sampler)
        t = int(torch.randint(1, self.m + 1, (1,), generator=inputs.generator).item())
        step = inputs.sampler.num_steps - t
        x0_hat = inputs.sampler.sample(
            inputs.model, inputs.cond, inputs.noise, grad_from=step, stop_at=step, generator=inputs.generator
        )
        out = reward_loss(inputs, x0_hat)
        out.logs["refl_t"] = float(t)
        return out
