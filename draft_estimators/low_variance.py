"""DRaFT-LV: DRaFT-1 plus n re-noised copies of the final sample at the last step.

Algorithm 1: after sampling x0 with gradient through the last step, draw n noises,
x1 = α1·stop_grad(x0) + σ1·ε, x̂0 = denoise(x1) at the last timestep, and add the
gradients of r(x̂0). The n copies go through the UNet and the reward as one batch.
"""

from __future__ import annotations

from diffusers.utils.torch_utils import randn_tensor

from draft_core.errors import ConfigError
from draft_core.plugins.protocols import EstimatorOutput, StepInputs


class LowVariance:
    """n: re-noised copies per image (0 reduces to DRaFT-1)."""

    def __init__(self, n: int = 2) -> None:
        if not isinstance(n, int) or n < 0:
            raise ConfigError(f"estimator.n must be a non-negative integer, got {n!r}.")
        self.n = n

    def __repr__(self) -> str:
        return f"LowVariance(n={self.n})"

    def __call__(self, inputs: StepInputs) -> EstimatorOutput:
        model, sampler, cond = inputs.model, inputs.sampler, inputs.cond
        last = sampler.num_steps - 1
        x0 = sampler.sample(model, cond, inputs.noise, grad_from=last, generator=inputs.generator)
        images = model.decode(x0)
        reward = inputs.reward(images, cond.prompts)
        total = reward.sum()
        logs = {}
        if self.n:
            batch = x0.shape[0]
            eps = randn_tensor((self.n * batch, *x0.shape[1:]), generator=inputs.generator, device=x0.device, dtype=x0.dtype)
            x1 = sampler.add_noise(model, x0.detach().repeat(self.n, 1, 1, 1), eps, last)
            x0_hat = sampler.predict_x0(model, x1, last, cond.repeat(self.n))
            extra = inputs.reward(model.decode(x0_hat), cond.prompts * self.n)
            total = total + extra.sum()
            logs["reward_renoised"] = extra.detach().mean().item()
        return EstimatorOutput(
            loss=-total / reward.shape[0], reward=reward.detach(), images=images.detach(),
            queries=1 + self.n, logs=logs,
        )
