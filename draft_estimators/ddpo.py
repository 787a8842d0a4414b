"""DDPO (Black et al. 2023, "Training diffusion models with reinforcement learning"): PPO on
the sampling chain, the RL baseline of the DRaFT paper (Section 4.1, Figure 3).

Each sampled trajectory is an episode; its reward, normalised per prompt, is the
advantage of every step; the policy is each step's Gaussian (draft_estimators/policy.py
gives the buffer, the schedule and the loss). The reward needs no gradient.

Defaults are DDPO's published ones (its reference implementation's base config):
``clip_range`` 1e-4, advantages clipped at ±5 (``adv_clip_max``), ``timestep_fraction``
1.0, one inner epoch, per-prompt stat tracking with a buffer of 16 and a minimum count of
16 (its experiment configs turn tracking on). The rest of DDPO's setting lives in the
config, not here: sampler ``ddim`` with ``eta: 1.0``, 50 steps, ``guidance_scale: 5.0``;
``train.lr: 3.0e-4``. DDPO's experiments also take several optimiser steps per sampled
batch (e.g. 32 samples per GPU, 8 per step): ``train.batch_size: 32`` with
``minibatches: 4`` does the same.

Differences, by design: one random subset of steps per minibatch rather than per sample
(all steps are used at ``timestep_fraction: 1``, the default, so it then makes no
difference). With ``checkpoint: true`` each trained step's backward pass runs at once, as in
DDPO's code, through the runner's ``StepInputs.backward`` (a caller without it gets a recomputed
forward pass per step instead). The trained steps of a stored trajectory are independent given
its states, so ``timestep_batch`` of them share one denoiser call (and one backward pass) where
the sampler and model take per-sample timesteps (``ddim``/``ddpm`` on the ``sd`` family,
``flow-sde``/``cps`` on the ``sd3`` family); DDPO's code makes one call per step. The default
("auto") batches only small calls, where a call's fixed cost dominates: a speed-up there, at the
memory of the batched steps' activations.
"""

from __future__ import annotations

import torch

from draft_core.errors import ConfigError
from draft_estimators.advantages import PerPromptStatTracker, batch_advantages, gather_prompts_and_rewards
from draft_estimators.policy import PolicyGradient, _check_number


class DDPO(PolicyGradient):
    """clip_range: PPO's ε on the probability ratio. adv_clip_max: advantages are clipped to
    ±this. timestep_fraction: fraction of the noisy steps each update trains on.
    inner_epochs: passes over a sampled batch. minibatches: updates per pass (the batch is
    split). per_prompt_stat_tracking: normalise by each prompt's running statistics
    (stat_buffer_size rewards, used once stat_min_count are in; the batch's before that);
    False normalises by the batch. checkpoint: hold one step's activations instead of all
    (each step's backward pass at once, or its forward pass recomputed; module docstring).
    timestep_batch: trained steps per denoiser call (their states concatenated on the batch axis,
    per-sample timesteps; the same loss and gradient, activations of that many steps held at
    once); "auto" batches them while the call stays small (policy.AUTO_TIMESTEP_ELEMENTS: 16 steps
    of the 8x8 tiny-random at batch 4, 1 for SD at 512 px)."""

    name = "ddpo"

    def __init__(
        self,
        clip_range: float = 1e-4,
        adv_clip_max: float = 5.0,
        timestep_fraction: float = 1.0,
        inner_epochs: int = 1,
        minibatches: int = 1,
        per_prompt_stat_tracking: bool = True,
        stat_buffer_size: int = 16,
        stat_min_count: int = 16,
        checkpoint: bool = True,
        timestep_batch: int | str = "auto",
    ) -> None:
        super().__init__(
            clip_range,
            adv_clip_max,
            timestep_fraction,
            inner_epochs,
            minibatches,
            checkpoint,
            timestep_batch=timestep_batch,
        )
        _check_number("stat_buffer_size", stat_buffer_size, 1, integer=True)
        _check_number("stat_min_count", stat_min_count, 1, integer=True)
        if not isinstance(per_prompt_stat_tracking, bool):
            raise ConfigError(
                f"estimator.per_prompt_stat_tracking must be true or false, got {per_prompt_stat_tracking!r}."
            )
        self.tracker = PerPromptStatTracker(stat_buffer_size, stat_min_count) if per_prompt_stat_tracking else None

    def __repr__(self) -> str:
        tracking = (
            f"stat_buffer_size={self.tracker.buffer_size}, stat_min_count={self.tracker.min_count}"
            if self.tracker
            else "per_prompt_stat_tracking=False"
        )
        return (
            f"DDPO(clip_range={self.clip_range}, adv_clip_max={self.adv_clip_max}, timestep_fraction="
            f"{self.timestep_fraction}, inner_epochs={self.inner_epochs}, minibatches={self.minibatches}, {tracking}, "
            f"timestep_batch={self.timestep_batch!r})"
        )

    def advantages(self, rewards: torch.Tensor, prompts: list[str]):
        everyone, all_rewards, start = gather_prompts_and_rewards(prompts, rewards)
        if not torch.isfinite(all_rewards).all():  # a batch to drop, on every process alike: no statistics kept
            return torch.full_like(rewards, float("nan")), {}
        adv = self.tracker.update(everyone, all_rewards) if self.tracker else batch_advantages(all_rewards)
        return adv[start : start + rewards.shape[0]].to(rewards), {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        if self.tracker is not None:
            state.update(self.tracker.state_dict())
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        if self.tracker is not None:
            self.tracker.load_state_dict(state)
