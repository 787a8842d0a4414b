"""The three protocols every sampler, estimator and reward implements.

Shapes: ``B`` batch, ``C/h/w`` the model's sample space (VAE latents, or pixels for
a pixel-space model), ``H/W`` decoded image size, ``L/D`` text tokens and width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from draft_core.models.conditioning import Conditioning

if TYPE_CHECKING:  # pragma: no cover
    from draft_core.models.pipeline import DiffusionModel

__all__ = ["Conditioning", "EstimatorOutput", "GradientEstimator", "Reward", "Sampler", "StepInputs"]


@runtime_checkable
class Reward(Protocol):
    """``reward(images, prompts) -> Tensor[B]``; higher is better.

    images: [B, 3, H, W] float in [0, 1], any device; the result must be
    differentiable with respect to ``images``, unless the reward declares
    ``differentiable = False`` (an attribute of the object or its class; absent means
    True): a black-box score (a real JPEG encoder's file size, an OCR or detector count,
    a judge model) returns values without a graph. Only estimators that do not need the
    reward's gradient (``needs_reward_gradient = False``: ddpo, grpo) accept such a reward;
    the others refuse it before any model loads. A weighted sum is differentiable only if
    every term is.

    Optional: ``check_available() -> None``, for a reward that loads weights. It must be cheap
    (look for the files at a configured path or in the Hugging Face cache; load nothing) and
    raise a ``DraftError`` (e.g. ``ModelLoadError``) naming what is missing and how to provide
    it. ``draft train`` calls it in ``--dry-run`` and before the run folder is created.
    """

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


@runtime_checkable
class Sampler(Protocol):
    """Runs the reverse process and exposes what gradient estimators need.

    Steps are indexed ``i = 0 .. T-1`` in sampling order (step 0 starts from noise;
    step T-1 is the paper's t = 1).

    Optional capability, for policy-gradient estimators (ddpo, grpo), offered by samplers
    whose steps draw noise (``ddpm``; ``ddim`` with eta > 0; ``flow-sde`` with eta > 0; any SDE sampler can join):
    ``stochastic: bool`` (True when the steps draw noise), ``initial_sample(model, noise)
    -> x_0`` and ``transition_distribution(model, sample, step, cond, lora_on=True) ->
    (mean, std)``: the Gaussian N(mean, std²) that step ``step`` draws x_{i+1} from given
    x_i = ``sample``, with classifier-free guidance inside the mean and autograd through it
    when enabled; mean [B, C, h, w], std a tensor broadcastable to it (0 at a step that
    draws no noise). ``draft_core.samplers.gaussian.log_prob(x_next, mean, std)`` turns it
    into log p_θ(x_{i+1} | x_i, c); lora_on=False gives the frozen base model's step.
    ``transition_distributions(model, samples, steps, cond, lora_on=True) -> [(mean, std)]``,
    optional as well, gives the same at several (sample, step) pairs in one denoiser call
    (ddpo's ``timestep_batch``); without it they are taken one at a time.
    """

    num_steps: int

    def sample(
        self,
        model: DiffusionModel,
        cond: Conditioning,
        noise: torch.Tensor,
        *,
        grad_from: int | None = None,
        stop_at: int | None = None,
        checkpoint: bool = False,
        lora_steps: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
        trace: list[tuple[int, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Sample [B, C, h, w] from ``noise`` (same shape).

        grad_from: first step run with autograd (stop-gradient on its input, except at
        step 0, where gradients reach ``noise`` if it requires them: DOODL); None runs
        every step without autograd. stop_at: stop at that step and return its one-step
        prediction x̂0 (ReFL). checkpoint: recompute each differentiable step in the
        backward pass, keeping only its input. lora_steps: LoRA active only for steps
        start <= i < end. trace: a list to which each step appends (i, its input, detached).
        """
        ...

    def predict_x0(self, model: DiffusionModel, sample: torch.Tensor, step: int, cond: Conditioning) -> torch.Tensor:
        """One-step prediction x̂0 from ``sample`` at step ``step`` (with guidance)."""
        ...

    def add_noise(self, model: DiffusionModel, x0: torch.Tensor, noise: torch.Tensor, step: int) -> torch.Tensor:
        """Forward-diffuse ``x0`` to the noise level of step ``step``: α_t x0 + σ_t ε ((1 − σ) x0 + σ ε for a flow)."""
        ...


@dataclass
class StepInputs:
    """What an estimator gets for one training step.

    noise: [B, C, h, w] initial noise x_T. generator: the source of any further
    randomness the estimator draws (re-noising, random truncation), so that a
    resumed run draws the same numbers. backward: where the caller allows it, a
    function that runs the backward pass of a part of the loss at once (the runner's one
    scales it for gradient accumulation); an estimator whose loss is a sum of parts
    with separate graphs may call it on each part in turn, so that only one part's
    graph is alive at a time, and return ``EstimatorOutput(backward_done=True)``.
    None: return the whole loss and let the caller differentiate it.
    """

    model: DiffusionModel
    sampler: Sampler
    reward: Reward
    cond: Conditioning
    noise: torch.Tensor
    generator: torch.Generator
    backward: Callable[[torch.Tensor], None] | None = None


@dataclass
class EstimatorOutput:
    """loss: scalar to minimise (its gradient is the estimator's). reward: [B], detached,
    the reward of the batch's samples. queries: reward evaluations per image this step (0 when
    the call trains on samples stored by an earlier call, as ddpo and grpo do).
    logs: extra scalars for metrics.jsonl. backward_done: the estimator already ran the
    backward pass of the whole loss through ``StepInputs.backward``; ``loss`` is then
    its detached value, for logging and the non-finite check only."""

    loss: torch.Tensor
    reward: torch.Tensor
    images: torch.Tensor | None = None
    queries: int = 1
    logs: dict[str, float] = field(default_factory=dict)
    backward_done: bool = False


@runtime_checkable
class GradientEstimator(Protocol):
    """Turns (model, sampler, reward, batch) into a surrogate loss.

    Optional methods the runner uses when an estimator has them:

    - ``check(sampler)``: raise ``ConfigError`` for a sampler it cannot work with.
    - ``differentiated_steps(num_steps) -> range``: the sampling steps whose UNet calls
      can carry gradient to the parameters (used to warn when a learned guidance
      schedule would learn only some of its knots).
    - ``on_optimizer_step(applied: bool)``: called once per optimiser step, after the
      runner's non-finite checks and all ``train.grad_accum`` micro-batches: ``applied``
      is True right after the LoRA's update, False when the update was skipped. An
      estimator with state of its own to train (``dpg``'s critic) updates it here, so
      it moves exactly when the policy does, and discards what it accumulated otherwise.
    - ``state_dict()`` / ``load_state_dict(state)``: tensors saved with each checkpoint.
    """

    def __call__(self, inputs: StepInputs) -> EstimatorOutput: ...
