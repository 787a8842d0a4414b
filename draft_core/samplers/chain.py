"""The reverse-process loop every scheduler-based sampler shares, differentiable on demand.

A subclass names its diffusers scheduler and how one step draws noise; this class runs
the chain with classifier-free guidance and what the gradient estimators need: steps
before ``grad_from`` run without autograd, later steps with it (optionally checkpointed,
keeping only each step's input), early exit with the one-step prediction x̂0, and a
window of steps in which the LoRA is active. Per-step randomness is drawn outside the
checkpointed function, so recomputation in the backward pass sees the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from draft_core.errors import ConfigError
from draft_core.lora import adapters_enabled
from draft_core.models.conditioning import Conditioning
from draft_core.models.family import upcast
from draft_core.plugins.bases import SamplerBase


class ChainSampler(SamplerBase):
    """CFG: ε̃ = ε(∅) + g·(ε(c) − ε(∅)), g = guidance_scale (diffusers' g, the paper's 1 + w).

    One rule for a constant g and a learned schedule: the formula is applied for every g,
    including 0 < g < 1 (between unconditional and conditional) and g <= 0; g = 1 is the
    conditional prediction alone, computed with one UNet call. (diffusers' pipelines
    instead switch guidance off for every g <= 1.)"""

    scheduler_class: Any = None
    #: False for diffusion samplers (ddim, ddpm), True for flow-matching ones (euler, flow-sde).
    flow_matching: bool = False

    def __init__(self, steps: int = 50, guidance_scale: float = 7.5) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"sampler.steps must be a positive integer, got {steps!r}.")
        self.num_steps = steps
        self.guidance_scale = float(guidance_scale)
        self.guidance_schedule = None  # a learned per-step schedule (draft_core.training.learned_sampling), if any
        self._cache: tuple[dict, tuple, Any, None] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.num_steps}, guidance_scale={self.guidance_scale})"

    # -- what a subclass provides ----------------------------------------------------
    def draw_step_noise(self, x: torch.Tensor, generator: torch.Generator | None) -> Any:
        """Randomness for one step, drawn before the step runs (None for deterministic steps)."""
        return None

    def scheduler_step(self, sched, out: torch.Tensor, t: torch.Tensor, x: torch.Tensor, noise: Any):
        """(x_prev, x̂0) from the scheduler's own step."""
        raise NotImplementedError

    # -- scheduler ---------------------------------------------------------------------
    def scheduler(self, model):
        """The model's scheduler with timesteps set; cached (these steps keep no state)."""
        # Asked once per step, so the key is cheap to compare: the model, its device, its scheduler config and
        # the number of steps, which are all its timesteps depend on (ModelFamily.timestep_kwargs).
        config, key = model.scheduler_config, (id(model), model.device, self.num_steps)
        cache = self._cache
        if cache is not None and cache[1] == key and (cache[0] is config or cache[0] == config):
            return cache[2]
        sched = self.scheduler_class.from_config(config)
        sched.set_timesteps(self.num_steps, device=model.device, **model.timestep_kwargs(self.num_steps))
        self._cache = (config, key, sched, None)
        return sched

    def timesteps(self, model) -> torch.Tensor:
        return self.scheduler(model).timesteps

    # -- one step ----------------------------------------------------------------------
    def guidance_at(self, step: int):
        """The guidance scale at ``step``: the constant, or the learned schedule's (a tensor)."""
        if self.guidance_schedule is None:
            return self.guidance_scale
        return self.guidance_schedule.at(step, self.num_steps)

    def _model_output(
        self, model, sample: torch.Tensor, t: torch.Tensor, cond: Conditioning, step: int
    ) -> torch.Tensor:
        """The family's guided output at ``step`` (a learned schedule's scale is a tensor, so CFG always runs)."""
        return model.denoise(sample, t, cond, self.guidance_at(step))

    def _step(self, model, sample, i, cond, lora_on, noise=None):
        sched = self.scheduler(model)
        t = sched.timesteps[i]
        with adapters_enabled(model.denoiser, lora_on):
            out = self._model_output(model, sample, t, cond, i)
        return self.scheduler_step(sched, out, t, sample, noise)

    def _next(self, model, sample, i, cond, lora_on, noise=None):
        return self._step(model, sample, i, cond, lora_on, noise)[0]

    # -- the protocol --------------------------------------------------------------------
    def sample(
        self,
        model,
        cond: Conditioning,
        noise: torch.Tensor,
        *,
        grad_from: int | None = None,
        stop_at: int | None = None,
        checkpoint: bool = False,
        lora_steps: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
        trace: list | None = None,
    ) -> torch.Tensor:
        T = self.num_steps
        for name, value in (("grad_from", grad_from), ("stop_at", stop_at)):
            if value is not None and not 0 <= value < T:
                raise ConfigError(f"{name}={value} is outside the {T} sampling steps (0..{T - 1}).")
        if grad_from is not None and stop_at is not None and stop_at < grad_from:
            raise ConfigError(f"stop_at={stop_at} comes before grad_from={grad_from}: no step would carry gradient.")
        x = self.initial_sample(model, noise)
        for i in range(T):
            lora_on = lora_steps is None or lora_steps[0] <= i < lora_steps[1]
            if trace is not None:
                trace.append((i, x.detach()))
            step_noise = self.draw_step_noise(x, generator) if i != stop_at else None
            differentiable = grad_from is not None and i >= grad_from
            if not differentiable:
                with torch.no_grad():
                    if i == stop_at:
                        return self._step(model, x, i, cond, lora_on)[1]
                    x = self._next(model, x, i, cond, lora_on, step_noise)
                continue
            if i == grad_from and i > 0:
                # stop_grad(x_t): the truncation of DRaFT-K / ReFL. At step 0 the input is the caller's
                # x_T, which keeps its graph: DOODL differentiates with respect to it.
                x = x.detach()
            if i == stop_at:
                return self._step(model, x, i, cond, lora_on)[1]
            if checkpoint:
                # The step sets its own LoRA state, so recomputation in the backward pass
                # sees the same adapters as the forward did.
                x = torch_checkpoint(self._next, model, x, i, cond, lora_on, step_noise, use_reentrant=False)
            else:
                x = self._next(model, x, i, cond, lora_on, step_noise)
        return x

    # -- the MDP view of sampling (paper Appendix C.2) ------------------------------------
    def action(self, model, sample: torch.Tensor, step: int, cond: Conditioning) -> torch.Tensor:
        """The policy's action at step ``step``: the guided model output (ε̃, or ṽ for v-prediction)."""
        t = self.scheduler(model).timesteps[step]
        return self._model_output(model, upcast(sample), t, cond, step)

    def transition(
        self, model, sample: torch.Tensor, step: int, action: torch.Tensor, noise: Any = None
    ) -> torch.Tensor:
        """The next state x_{i+1} from state ``sample`` and ``action``, by the scheduler's own step."""
        sched = self.scheduler(model)
        return self.scheduler_step(sched, action, sched.timesteps[step], upcast(sample), noise)[0]

    # -- the stochastic policy view (DDPO, GRPO): each step's Gaussian ------------------------
    #: whether the steps draw noise (subclasses say); deterministic samplers have no step densities.
    stochastic: bool = False

    def initial_sample(self, model, noise: torch.Tensor) -> torch.Tensor:
        """The chain's first state x_0 from the initial noise (scaled by the scheduler's init sigma)."""
        return upcast(noise) * self.scheduler(model).init_noise_sigma

    def transition_distribution(
        self, model, sample: torch.Tensor, step: int, cond: Conditioning, lora_on: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian N(mean, std²) step ``step`` draws x_{i+1} from, given x_i = ``sample``.

        mean: [B, C, h, w], a function of the guided model output (CFG inside the mean, as in
        DDPO), with autograd when enabled; std: a 0-d tensor (0 for a step without noise).
        lora_on=False gives the frozen base model's step.
        """
        sched = self.scheduler(model)
        t = sched.timesteps[step]
        x = upcast(sample)
        with adapters_enabled(model.denoiser, lora_on):
            out = self._model_output(model, x, t, cond, step)
        return self.step_gaussian(sched, out, t, x)

    def transition_distributions(
        self, model, samples: list[torch.Tensor], steps: list[int], cond: Conditioning, lora_on: bool = True
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``transition_distribution`` at each (sample, step) pair, in one denoiser call.

        The states go into one batch with per-sample timesteps (each [B, ...] with ``cond``'s B
        rows); each step's Gaussian is then the scheduler's own arithmetic on its slice of the
        output, so the result equals the step-by-step one up to float round-off. A small denoiser
        runs far more efficiently at a larger batch. Step by step where the model's ``denoise``
        takes one timestep only, or where a learned guidance schedule varies the scale per step.
        """
        if len(steps) < 2 or self.guidance_schedule is not None or not getattr(model, "per_sample_timesteps", False):
            return [self.transition_distribution(model, x, i, cond, lora_on) for x, i in zip(samples, steps)]
        sched = self.scheduler(model)
        xs = [upcast(x) for x in samples]
        t = torch.cat([sched.timesteps[i].expand(x.shape[0]) for x, i in zip(xs, steps)])
        with adapters_enabled(model.denoiser, lora_on):
            out = self._model_output(model, torch.cat(xs), t, cond.repeat(len(steps)), steps[0])
        outs = out.split([x.shape[0] for x in xs])
        return [self.step_gaussian(sched, o, sched.timesteps[i], x) for o, i, x in zip(outs, steps, xs)]

    def step_gaussian(
        self, sched, out: torch.Tensor, t: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the scheduler's step from model output ``out`` (subclasses with noise provide it)."""
        raise NotImplementedError(f"{type(self).__name__} draws no noise, so its steps have no Gaussian density.")

    def predict_x0(
        self, model, sample: torch.Tensor, step: int, cond: Conditioning, lora_on: bool = True
    ) -> torch.Tensor:
        return self._step(model, upcast(sample), step, cond, lora_on)[1]

    def add_noise(self, model, x0: torch.Tensor, noise: torch.Tensor, step: int) -> torch.Tensor:
        sched = self.scheduler(model)
        t = sched.timesteps[step : step + 1].expand(x0.shape[0])
        return sched.add_noise(upcast(x0), noise.to(x0), t)
