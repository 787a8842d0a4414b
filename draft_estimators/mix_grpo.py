r"""MixGRPO (Li et al. 2025, "MixGRPO: Unlocking Flow-based GRPO Efficiency with Mixed ODE-SDE", arXiv 2507.21802).

GRPO on a flow model where only a window of W consecutive steps samples with the SDE; every other
step is the deterministic ODE (Euler) step x_s = x_t + dt·v. Outside the window the policy has no
density, so only the window's steps are trained (all of them, for every sample)::

    x_{i+1} ~ N(μ_θ(x_i), s_i²)   for i in [c, c + W)     (the sampler's SDE step: flow-sde or cps)
    x_{i+1} = x_i + dt_i·v_θ(x_i)  otherwise
    L = (1/|W|)·Σ_{i∈W} mean_b max(−A_b·ρ_{b,i}, −A_b·clip(ρ_{b,i}, 1 ± clip_range))

with GRPO's group advantages (draft_estimators/grpo.py). Fewer trained steps per sample: the cost of
a call is the rollout plus W steps' backward passes instead of all of them.

The window's start c follows ``schedule``:

- ``progressive`` (the paper's): c = 0 at first and moves by ``stride`` steps every
  ``iters_per_group`` optimiser steps; with ``roll_back`` it returns to 0 once it passes N − 2
  (N the sampler's steps), without it it stays at N − 2.
- ``random``: c drawn uniformly from 0 .. N − W for each sampled batch (as Flow-GRPO-Fast places
  its window), from the run's random stream.

``same_noise`` (the reference's ``--init_same_noise``, on by default there and here): the samples of
one prompt share their initial noise, so they differ only through the window's noise.
``guard: true`` adds GRPO-Guard (draft_estimators/guard.py). A window covering every step is GRPO on
the same sampler, step for step (tests/test_mix_grpo.py).

Parity with the reference code (Tencent-Hunyuan/MixGRPO): defaults are its FLUX script's (W = 4,
stride 1, 25 iterations per window position, roll back, clip range 1e-4, no KL). Its window never
reaches the last two steps (it ends at N − 2); here it may reach the last step. Its log-probability is
the same Gaussian's (mean over elements), so clip ranges carry over. MixGRPO-Flash replaces the ODE
steps after the window by fewer DPM-Solver++(2M) steps on a sub-schedule that starts at the window's
end; diffusers offers that solver for flow models (``DPMSolverMultistepScheduler`` with
``use_flow_sigmas``), but its ``set_timesteps`` takes no custom sigmas, so the sub-schedule would have
to be written into its internals: not done. After the window the steps are the sampler's own, by Euler.

Needs a flow-matching model and sampler (flow-sde or cps with eta > 0): the ODE steps outside the
window are flow Euler steps.
"""

from __future__ import annotations

import torch

from draft_core.errors import ConfigError
from draft_core.lora import adapters_enabled
from draft_core.models.family import upcast
from draft_core.plugins.protocols import StepInputs
from draft_core.samplers.flow import FlowSampler
from draft_estimators.grpo import GRPO
from draft_estimators.policy import _check_number

SCHEDULES = ("progressive", "random")


class WindowedSampler:
    """A flow sampler's SDE steps inside ``window`` = (start, end), Euler steps (std 0) outside; all else delegated."""

    def __init__(self, inner, window: tuple[int, int]) -> None:
        self.inner, self.window = inner, window

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def transition_distribution(self, model, sample, step, cond, lora_on=True):
        if self.window[0] <= step < self.window[1]:
            return self.inner.transition_distribution(model, sample, step, cond, lora_on=lora_on)
        x = upcast(sample)
        sched = self.inner.scheduler(model)
        with adapters_enabled(model.denoiser, lora_on):
            v = self.inner.action(model, x, step, cond)
        _, dt = FlowSampler._sigmas(sched, step, x)
        return x + dt * v, torch.zeros((), dtype=x.dtype, device=x.device)


class MixGRPO(GRPO):
    """window: SDE steps per trajectory (W). schedule: progressive or random. stride, iters_per_group,
    roll_back: the progressive schedule's (module docstring). same_noise: a prompt's samples share their
    initial noise. group_size, beta, clip_range, adv_clip_max, inner_epochs, minibatches, checkpoint,
    guard, timestep_batch: as for grpo (every window step is trained: no timestep_fraction)."""

    name = "mix-grpo"

    def __init__(
        self,
        window: int = 4,
        schedule: str = "progressive",
        stride: int = 1,
        iters_per_group: int = 25,
        roll_back: bool = True,
        same_noise: bool = True,
        group_size: int = 4,
        beta: float = 0.0,
        clip_range: float = 1e-4,
        adv_clip_max: float = 5.0,
        inner_epochs: int = 1,
        minibatches: int = 1,
        checkpoint: bool = True,
        guard: bool = False,
        timestep_batch: int | str = "auto",
    ) -> None:
        super().__init__(
            group_size=group_size,
            beta=beta,
            clip_range=clip_range,
            adv_clip_max=adv_clip_max,
            inner_epochs=inner_epochs,
            minibatches=minibatches,
            checkpoint=checkpoint,
            guard=guard,
            timestep_batch=timestep_batch,
        )
        self.window = _check_number("window", window, 1, integer=True)
        self.stride = _check_number("stride", stride, 0, integer=True)
        self.iters_per_group = _check_number("iters_per_group", iters_per_group, 1, integer=True)
        if schedule not in SCHEDULES:
            raise ConfigError(
                f"estimator.schedule must be one of {', '.join(SCHEDULES)} (where the SDE window sits "
                f"at each sampled batch), got {schedule!r}."
            )
        for key, value in (("roll_back", roll_back), ("same_noise", same_noise)):
            if not isinstance(value, bool):
                raise ConfigError(f"estimator.{key} must be true or false, got {value!r}.")
        self.schedule, self.roll_back, self.same_noise = schedule, roll_back, same_noise
        self.iteration = 0  # optimiser steps so far (the progressive schedule's clock)
        self.current: tuple[int, int] | None = None  # the window of the buffer's batch

    def __repr__(self) -> str:
        return (
            f"MixGRPO(window={self.window}, schedule={self.schedule!r}, stride={self.stride}, iters_per_group="
            f"{self.iters_per_group}, roll_back={self.roll_back}, same_noise={self.same_noise}, group_size="
            f"{self.group_size}, beta={self.kl_beta}, clip_range={self.clip_range}, inner_epochs={self.inner_epochs}, "
            f"minibatches={self.minibatches}"
            + (", guard=True" if self.guard else "")
            + (f", timestep_batch={self.timestep_batch}" if self.timestep_batch != "auto" else "")
            + ")"
        )

    # -- checks ------------------------------------------------------------------------------------
    def check(self, sampler) -> None:
        if not getattr(sampler, "flow_matching", False):
            raise ConfigError(
                f"estimator 'mix-grpo' mixes a flow model's SDE steps (inside its window) with its ODE steps (outside), "
                f"so it needs a flow-matching model and sampler (flow-sde or cps with eta > 0), got {sampler!r}; for a "
                f"diffusion model use grpo or ddpo with ddim (eta > 0) or ddpm."
            )
        super().check(sampler)

    # -- the window --------------------------------------------------------------------------------
    def start_at(self, iteration: int, num_steps: int, generator: torch.Generator | None = None) -> int:
        """The window's first step for a batch sampled after ``iteration`` optimiser steps."""
        last = max(num_steps - 2, 0)
        if self.schedule == "random":
            high = max(num_steps - self.window, 0)
            return int(torch.randint(0, high + 1, (1,), generator=generator).item())
        group = iteration // self.iters_per_group
        if not self.roll_back or self.stride == 0:
            return min(group * self.stride, last)
        positions = last // self.stride + 1  # c = 0, stride, ..., <= N − 2, then back to 0
        return (group % positions) * self.stride

    def rollout_sampler(self, sampler):
        assert self.current is not None
        return WindowedSampler(sampler, self.current)

    def _fill(self, inputs: StepInputs):
        n = inputs.sampler.num_steps
        start = self.start_at(self.iteration, n, inputs.generator)
        self.current = (start, min(start + self.window, n))
        images, logs, dropped = super()._fill(inputs)
        logs.update({"window_start": float(start), "window_steps": float(self.current[1] - start)})
        return images, logs, dropped

    def expand(self, inputs: StepInputs):
        if not self.same_noise:
            return super().expand(inputs)
        return inputs.cond.repeat(self.group_size), inputs.noise.repeat(
            self.group_size, *([1] * (inputs.noise.ndim - 1))
        )

    # -- state -------------------------------------------------------------------------------------
    def on_optimizer_step(self, applied: bool) -> None:
        self.iteration += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "mix.iteration": torch.tensor(self.iteration)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.iteration = int(state.get("mix.iteration", 0))
