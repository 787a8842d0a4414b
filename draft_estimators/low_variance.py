"""DRaFT-LV: DRaFT-1 plus n re-noised copies of the final sample at the last step.

Algorithm 1: after sampling x0 with gradient through the last step, draw n noises,
x1 = α1·stop_grad(x0) + σ1·ε, x̂0 = denoise(x1) at the last timestep, and add the
gradients of r(x̂0). The loss is a sum of 1 + n parts with separate graphs (the sample's
last UNet step, decode and reward; each copy's UNet step, decode and reward). When the
caller passes ``StepInputs.backward``, each part's backward pass runs as soon as the part
is computed, so only one part's graph is alive at a time (the peak memory of DRaFT-1);
otherwise the n copies go through the UNet and the reward as one batch and the whole
loss is returned. Both give the same gradient.
"""

from __future__ import annotations

from diffusers.utils.torch_utils import randn_tensor

from draft_core.errors import ConfigError
from draft_core.plugins.bases import EstimatorBase
from draft_core.plugins.protocols import EstimatorOutput, StepInputs


class LowVariance(EstimatorBase):
    """n: re-noised copies per image (0 reduces to DRaFT-1)."""

    def __init__(self, n: int = 2) -> None:
        if not isinstance(n, int) or n < 0:
            raise ConfigError(f"estimator.n must be a non-negative integer, got {n!r}.")
        self.n = n

    def __repr__(self) -> str:
        return f"LowVariance(n={self.n})"

    def differentiated_steps(self, num_steps: int) -> range:
        return range(num_steps - 1, num_steps)

    def __call__(self, inputs: StepInputs) -> EstimatorOutput:
        model, sampler, cond = inputs.model, inputs.sampler, inputs.cond
        split = inputs.backward is not None
        last = sampler.num_steps - 1
        x0 = sampler.sample(model, cond, inputs.noise, grad_from=last, generator=inputs.generator)
        images = model.decode(x0)
        reward = inputs.reward(images, cond.prompts)
        batch = reward.shape[0]
        loss = -reward.sum() / batch
        if split:
            inputs.backward(loss)
            loss = loss.detach()
        logs = {}
        if self.n:
            eps = randn_tensor(
                (self.n * batch, *x0.shape[1:]), generator=inputs.generator, device=x0.device, dtype=x0.dtype
            )
            x0 = x0.detach()
            # One chunk per copy when splitting the backward pass, else all copies as one batch.
            chunks = [(j * batch, (j + 1) * batch) for j in range(self.n)] if split else [(0, self.n * batch)]
            renoised = 0.0
            for lo, hi in chunks:
                copies = (hi - lo) // batch
                x1 = sampler.add_noise(model, x0.repeat(copies, 1, 1, 1), eps[lo:hi], last)
                x0_hat = sampler.predict_x0(model, x1, last, cond.repeat(copies))
                extra = inputs.reward(model.decode(x0_hat), cond.prompts * copies)
                part = -extra.sum() / batch
                if split:
                    inputs.backward(part)
                    part = part.detach()
                loss = loss + part
                renoised += extra.detach().sum().item()
            logs["reward_renoised"] = renoised / (self.n * batch)
        return EstimatorOutput(
            loss=loss,
            reward=reward.detach(),
            images=images.detach(),
            queries=1 + self.n,
            logs=logs,
            backward_done=split,
        )
