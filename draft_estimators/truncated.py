"""DRaFT-K and full DRaFT: backpropagate the reward through the last K sampling steps.

Algorithm 1 with t_truncate = K: the first T-K steps run without autograd, then
stop_grad(x_K), then K differentiable steps (checkpointed when K > 1 by default: only
each step's input latent is kept). DRaFT is the case K = T. With ``k_range: [lo, hi]``
K is drawn uniformly per step (the random truncation of AlignProp).
"""

from __future__ import annotations

import torch

from draft_core.errors import ConfigError
from draft_core.plugins.protocols import EstimatorOutput, StepInputs


def reward_loss(inputs: StepInputs, sample) -> EstimatorOutput:
    """Decode ``sample``, score it, and return loss = -mean reward."""
    images = inputs.model.decode(sample)
    reward = inputs.reward(images, inputs.cond.prompts)
    return EstimatorOutput(loss=-reward.mean(), reward=reward.detach(), images=images.detach())


class TruncatedBackprop:
    """DRaFT-K. k: number of final sampling steps differentiated (None: all of them).
    k_range: [lo, hi] draws K uniformly in lo..hi each step instead (overrides k).
    checkpoint: recompute each differentiable step in the backward pass; None means
    "when K > 1" (the paper needs no checkpointing for K = 1)."""

    def __init__(self, k: int | None = 1, checkpoint: bool | None = None, k_range: list[int] | None = None) -> None:
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"estimator.k must be a positive integer (1 <= k <= sampler steps), got {k!r}.")
        if k_range is not None:
            ok = isinstance(k_range, (list, tuple)) and len(k_range) == 2 and all(isinstance(v, int) for v in k_range)
            if not ok or not 1 <= k_range[0] <= k_range[1]:
                raise ConfigError(f"estimator.k_range must be [lo, hi] with 1 <= lo <= hi <= sampler steps, got {k_range!r}.")
            k_range = (int(k_range[0]), int(k_range[1]))
        self.k = k
        self.k_range = k_range
        self.checkpoint = checkpoint

    def __repr__(self) -> str:
        k = f"k_range={list(self.k_range)}" if self.k_range else f"k={self.k}"
        return f"{type(self).__name__}({k}, checkpoint={self.checkpoint})"

    def check(self, sampler) -> None:
        """Fail before any model loads when K cannot fit the sampler's steps."""
        largest, key = (self.k_range[1], "k_range") if self.k_range else (self.k, "k")
        if largest is not None and largest > sampler.num_steps:
            raise ConfigError(
                f"estimator.{key}={list(self.k_range) if self.k_range else self.k} exceeds sampler.steps="
                f"{sampler.num_steps}; use 1 <= k <= {sampler.num_steps} (k = steps is full DRaFT)."
            )

    def draw_k(self, inputs: StepInputs) -> int:
        if self.k_range:
            lo, hi = self.k_range
            return int(torch.randint(lo, hi + 1, (1,), generator=inputs.generator).item())
        return inputs.sampler.num_steps if self.k is None else self.k

    def __call__(self, inputs: StepInputs) -> EstimatorOutput:
        sampler = inputs.sampler
        self.check(sampler)
        k = self.draw_k(inputs)
        checkpoint = k > 1 if self.checkpoint is None else self.checkpoint
        x0 = sampler.sample(
            inputs.model, inputs.cond, inputs.noise, grad_from=sampler.num_steps - k, checkpoint=checkpoint,
            generator=inputs.generator,
        )
        out = reward_loss(inputs, x0)
        if self.k_range:
            out.logs["k"] = float(k)
        return out


class FullBackprop(TruncatedBackprop):
    """DRaFT: the gradient through the whole sampling chain, with per-step checkpointing."""

    def __init__(self, checkpoint: bool = True) -> None:
        super().__init__(k=None, checkpoint=checkpoint)
