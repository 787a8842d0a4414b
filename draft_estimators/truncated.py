"""DRaFT-K and full DRaFT: backpropagate the reward through the last K sampling steps.

Algorithm 1 with t_truncate = K: the first T-K steps run without autograd, then
stop_grad(x_K), then K differentiable steps (checkpointed when K > 1 by default: only
each step's input latent is kept). DRaFT is the case K = T.
"""

from __future__ import annotations

from draft_core.errors import ConfigError
from draft_core.protocols import EstimatorOutput, StepInputs


def reward_loss(inputs: StepInputs, sample) -> EstimatorOutput:
    """Decode ``sample``, score it, and return loss = -mean reward."""
    images = inputs.model.decode(sample)
    reward = inputs.reward(images, inputs.cond.prompts)
    return EstimatorOutput(loss=-reward.mean(), reward=reward.detach(), images=images.detach())


class TruncatedBackprop:
    """DRaFT-K. k: number of final sampling steps differentiated (None: all of them).
    checkpoint: recompute each differentiable step in the backward pass; None means
    "when k > 1" (the paper needs no checkpointing for K = 1)."""

    def __init__(self, k: int | None = 1, checkpoint: bool | None = None) -> None:
        if k is not None and (not isinstance(k, int) or k < 1):
            raise ConfigError(f"estimator.k must be a positive integer (1 <= k <= sampler steps), got {k!r}.")
        self.k = k
        self.checkpoint = checkpoint

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k}, checkpoint={self.checkpoint})"

    def check(self, sampler) -> None:
        """Fail before any model loads when K cannot fit the sampler's steps."""
        if self.k is not None and self.k > sampler.num_steps:
            raise ConfigError(
                f"estimator.k={self.k} exceeds sampler.steps={sampler.num_steps}; "
                f"use 1 <= k <= {sampler.num_steps} (k = steps is full DRaFT)."
            )

    def __call__(self, inputs: StepInputs) -> EstimatorOutput:
        sampler = inputs.sampler
        self.check(sampler)
        k = sampler.num_steps if self.k is None else self.k
        checkpoint = k > 1 if self.checkpoint is None else self.checkpoint
        x0 = sampler.sample(
            inputs.model, inputs.cond, inputs.noise, grad_from=sampler.num_steps - k, checkpoint=checkpoint
        )
        return reward_loss(inputs, x0)


class FullBackprop(TruncatedBackprop):
    """DRaFT: the gradient through the whole sampling chain, with per-step checkpointing."""

    def __init__(self, checkpoint: bool = True) -> None:
        super().__init__(k=None, checkpoint=checkpoint)
