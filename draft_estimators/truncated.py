"""DRaFT-K and full DRaFT: backpropagate the reward through the last K sampling steps.

Algorithm 1 with t_truncate = K: the first T-K steps run without autograd, then
stop_grad(x_K), then K differentiable steps (checkpointed when K > 1 by default: only
each step's input latent is kept). DRaFT is the case K = T. With ``k_range: [lo, hi]``
K is drawn uniformly per training step (DRaFT-K with a random K). ``alignprop_range:
[lo, hi]`` is AlignProp's own scheme instead (``draft_estimators.alignprop``): a cutoff
redrawn at every sampling step, the noise prediction of the steps before it detached,
the latents never.
"""

from __future__ import annotations

import torch

from draft_core.errors import ConfigError
from draft_core.plugins.bases import EstimatorBase
from draft_core.plugins.protocols import EstimatorOutput, StepInputs
from draft_estimators.alignprop import check_range, draw_kept, sample_with_kept_steps


def reward_loss(inputs: StepInputs, sample) -> EstimatorOutput:
    """Decode ``sample``, score it, and return loss = -mean reward."""
    images = inputs.model.decode(sample)
    reward = inputs.reward(images, inputs.cond.prompts)
    return EstimatorOutput(loss=-reward.mean(), reward=reward.detach(), images=images.detach())


class TruncatedBackprop(EstimatorBase):
    """DRaFT-K. k: number of final sampling steps differentiated (None: all of them).
    k_range: [lo, hi] draws K uniformly in lo..hi each step instead (overrides k).
    alignprop_range: [lo, hi], AlignProp's per-sampling-step cutoffs instead (overrides
    k; not with k_range). checkpoint: recompute each differentiable step in the backward
    pass; None means "when more than one step is differentiated" (the paper needs no
    checkpointing for K = 1)."""

    def __init__(
        self,
        k: int | None = 1,
        checkpoint: bool | None = None,
        k_range: list[int] | None = None,
        alignprop_range: list[int] | None = None,
    ) -> None:
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"estimator.k must be a positive integer (1 <= k <= sampler steps), got {k!r}.")
        if k_range is not None:
            ok = isinstance(k_range, (list, tuple)) and len(k_range) == 2 and all(isinstance(v, int) for v in k_range)
            if not ok or not 1 <= k_range[0] <= k_range[1]:
                raise ConfigError(
                    f"estimator.k_range must be [lo, hi] with 1 <= lo <= hi <= sampler steps, got {k_range!r}."
                )
            k_range = (int(k_range[0]), int(k_range[1]))
        if alignprop_range is not None:
            if k_range is not None:
                raise ConfigError(
                    "estimator.k_range and estimator.alignprop_range are two different random truncations; give one."
                )
            alignprop_range = check_range(alignprop_range)
        self.k = k
        self.k_range = k_range
        self.alignprop_range = alignprop_range
        self.checkpoint = checkpoint

    def __repr__(self) -> str:
        k = f"k_range={list(self.k_range)}" if self.k_range else f"k={self.k}"
        if self.alignprop_range:
            k = f"alignprop_range={list(self.alignprop_range)}"
        return f"{type(self).__name__}({k}, checkpoint={self.checkpoint})"

    def differentiated_steps(self, num_steps: int) -> range:
        """The steps that can carry gradient (some only on some training steps)."""
        if self.alignprop_range:
            return range(self.alignprop_range[0], num_steps)
        largest = self.k_range[1] if self.k_range else (num_steps if self.k is None else self.k)
        return range(num_steps - largest, num_steps)

    def check(self, sampler) -> None:
        """Fail before any model loads when K cannot fit the sampler's steps."""
        if self.alignprop_range:
            check_range(self.alignprop_range, sampler.num_steps)
            if not all(hasattr(sampler, m) for m in ("action", "transition", "draw_step_noise", "scheduler")):
                raise ConfigError(
                    f"estimator.alignprop_range drives the sampler step by step (action, transition), which "
                    f"{sampler!r} does not provide; use ddim or ddpm, or k_range."
                )
            return
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
        if self.alignprop_range:
            return self._alignprop(inputs)
        k = self.draw_k(inputs)
        checkpoint = k > 1 if self.checkpoint is None else self.checkpoint
        x0 = sampler.sample(
            inputs.model,
            inputs.cond,
            inputs.noise,
            grad_from=sampler.num_steps - k,
            checkpoint=checkpoint,
            generator=inputs.generator,
        )
        out = reward_loss(inputs, x0)
        if self.k_range:
            out.logs["k"] = float(k)
        return out

    def _alignprop(self, inputs: StepInputs) -> EstimatorOutput:
        sampler = inputs.sampler
        kept = draw_kept(*self.alignprop_range, sampler.num_steps, inputs.generator)
        checkpoint = sum(kept) > 1 if self.checkpoint is None else self.checkpoint
        x0 = sample_with_kept_steps(
            sampler, inputs.model, inputs.cond, inputs.noise, kept, inputs.generator, checkpoint
        )
        if not any(kept):  # every cutoff fell after its step: a zero gradient this time
            x0 = x0.detach().requires_grad_(True)
        out = reward_loss(inputs, x0)
        out.logs["kept_steps"] = float(sum(kept))
        return out


class FullBackprop(TruncatedBackprop):
    """DRaFT: the gradient through the whole sampling chain, with per-step checkpointing."""

    def __init__(self, checkpoint: bool = True) -> None:
        super().__init__(k=None, checkpoint=checkpoint)
