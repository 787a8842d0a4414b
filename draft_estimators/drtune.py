r"""DRTune (Wu et al., "Deep Reward Supervisions for Tuning Text-to-Image Diffusion Models", ECCV 2024,
arXiv 2405.00760): the reward's gradient through the whole chain, with the denoiser's input detached
and only K evenly spaced steps trained.

Every sampler step is an update linear in its input and in the model's output:
x_{k+1} = a_k·x_k + b_k·f_θ(x_k, t_k, c) (+ c_k·z_k for a step that draws noise z_k); for ``euler``
a_k = 1, b_k = σ_{k+1} − σ_k and f is the velocity; for DDIM f is ε̂. DRTune feeds the model
sg(x_k) and trains a subset S of the steps (outside S, f runs without autograd), so

    ∇_θ L = Σ_{k∈S} b_k·(Π_{j>k} a_j)·(∂f_θ(sg(x_k), t_k, c)/∂θ)ᵀ·∂L/∂x_T,     L = −r(decode(x_T)),

with no network input-Jacobian anywhere in the chain (the paper's cure for the gradient explosion of
full backpropagation) and memory for |S| model calls (one each with ``checkpoint``). S is K steps
spread evenly over the chain with a random offset, drawn per call: stride = ⌊T/K⌋,
start ~ U{0, …, T − 1 − (K − 1)·stride}, S = {start + i·stride}. No official code was published;
this choice of S follows the paper's description and the FlowBP reimplementation (its early-stopping
option is not included). The chain itself runs with the sampler's own steps (``transition``), so
it works with every scheduler-based sampler of both families, stochastic ones included (the noise
enters the updates as a constant).

This is not DRaFT-K (the last K steps, input Jacobians kept) nor AlignProp's truncation (random
kept steps, input Jacobians kept): with the stop-gradient, each trained step contributes one
vector-Jacobian product of the model and nothing else.
"""

from __future__ import annotations

import torch

from draft_core.errors import ConfigError
from draft_core.plugins.bases import EstimatorBase
from draft_core.plugins.protocols import EstimatorOutput, StepInputs
from draft_estimators.alignprop import sample_with_kept_steps
from draft_estimators.truncated import reward_loss


def spread_steps(num_steps: int, k: int, generator: torch.Generator) -> list[int]:
    """K of ``num_steps`` steps, evenly spaced (stride ⌊T/K⌋) from a uniformly drawn start."""
    stride = num_steps // k
    start = int(torch.randint(num_steps - (k - 1) * stride, (1,), generator=generator).item())
    return [start + i * stride for i in range(k)]


class DRTune(EstimatorBase):
    """k: sampling steps trained per call (K <= sampler steps), spread evenly over the chain from a random
    start. checkpoint: recompute each trained step's model call in the backward pass (None: when K > 1)."""

    def __init__(self, k: int = 3, checkpoint: bool | None = None) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(
                f"estimator.k must be a positive integer (the steps trained, 1 <= k <= sampler steps), got {k!r}."
            )
        if checkpoint is not None and not isinstance(checkpoint, bool):
            raise ConfigError(f"estimator.checkpoint must be true, false or null (when k > 1), got {checkpoint!r}.")
        self.k = k
        self.checkpoint = checkpoint

    def __repr__(self) -> str:
        return f"DRTune(k={self.k}, checkpoint={self.checkpoint})"

    def differentiated_steps(self, num_steps: int) -> range:
        return range(num_steps)

    def check(self, sampler) -> None:
        if not all(
            callable(getattr(sampler, m, None)) for m in ("initial_sample", "action", "transition", "draw_step_noise")
        ):
            raise ConfigError(
                f"estimator 'drtune' runs the sampler step by step (initial_sample, action, transition, "
                f"draw_step_noise) to detach the model's input at every step, which {sampler!r} does not provide; "
                f"use ddim, ddpm, euler or flow-sde."
            )
        if self.k > sampler.num_steps:
            raise ConfigError(
                f"estimator.k={self.k} exceeds sampler.steps={sampler.num_steps}; use 1 <= k <= {sampler.num_steps}."
            )

    def __call__(self, inputs: StepInputs) -> EstimatorOutput:
        sampler = inputs.sampler
        self.check(sampler)
        trained = spread_steps(sampler.num_steps, self.k, inputs.generator)
        kept = [i in trained for i in range(sampler.num_steps)]
        checkpoint = self.k > 1 if self.checkpoint is None else self.checkpoint
        x0 = sample_with_kept_steps(
            sampler, inputs.model, inputs.cond, inputs.noise, kept, inputs.generator, checkpoint, detach_inputs=True
        )
        out = reward_loss(inputs, x0)
        out.logs["first_trained_step"] = float(trained[0])
        return out
