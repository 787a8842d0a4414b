"""GRPO for diffusion (as in Flow-GRPO and DanceGRPO): G samples per prompt, advantages
normalised within each group, PPO's clipped ratio, and an optional KL term to the frozen
base model.

Each call samples ``group_size`` trajectories of each prompt of its batch (the first from
the runner's noise, the others from the estimator's random stream), so the reward is
queried G times per prompt. Advantage of sample g of prompt k: (r_gk − mean_g r_·k) /
(std_g r_·k + 1e-4). The KL term β · KL(p_θ ‖ p_base) per trained step is that of two
Gaussians with the step's std, ‖μ_θ − μ_base‖² / (2σ²) (mean over elements, like the
log-probabilities), μ_base being the same UNet with its LoRA off. Works on any sampler
that offers ``transition_distribution`` (ddpm, ddim with eta > 0, an SDE sampler of a
flow model); the buffer, schedule and loss are draft_estimators/policy.py's. The reward
needs no gradient. The rewards reported per call are each prompt's group mean ([B]).

Parity with the reference code, for settings carried over from it:

- ``beta``: this KL is the exact one of the two step Gaussians, ‖μ_θ − μ_base‖²/(2·std²) with
  flow-sde's std = g·√|dt|. Flow-GRPO's code divides by 2·g² instead (its ``std_dev_t`` lacks the
  √|dt|), so its KL is |dt| times this one, and a ``beta`` copied from its configs weighs the KL
  1/|dt| times more here: on SD3.5's schedule (shift 3) with its 10 training steps that is 3.7x to
  25x on the nine steps it trains and 112x at the last step (σ 0.0089 → 0), 14x to 115x with 40
  steps. Divide its ``beta`` by about 1/|dt| of the steps you train (tests/test_grpo_parity.py
  computes the factors).
- ``timestep_fraction``: DDPO's rule by default (each update trains a random subset of
  int(fraction·S) of the S noisy steps); ``timestep_selection: first`` is Flow-GRPO's, the first
  int(fraction·S) steps in sampling order (its 0.99 with 10 steps trains steps 0..8, never the last).
- Samplers: flow-sde is Flow-GRPO's SDE; DanceGRPO's, whose noise is eta·√|dσ|, is
  ``flow-sde`` with ``diffusion: dance-grpo``.

``guard: true`` is GRPO-Guard (draft_estimators/guard.py): the ratio ρ̃ = exp(mean_e(ε ⊙ (μ_θ − μ_old)))
per sample instead of PPO's, and each step's loss weighted by 1/|dt|, on a flow sampler.
"""

from __future__ import annotations

import torch

from draft_core.errors import ConfigError
from draft_core.plugins.protocols import StepInputs
from draft_estimators.advantages import group_advantages
from draft_estimators.policy import PolicyGradient, _check_number


class GRPO(PolicyGradient):
    """group_size: samples per prompt (G >= 2). beta: weight of the KL term to the base
    model (0: none; see the module's parity note before copying a Flow-GRPO beta).
    timestep_selection: "random" (DDPO) or "first" (Flow-GRPO: the first timestep_fraction of
    the noisy steps, in order). clip_range, adv_clip_max, timestep_fraction, inner_epochs,
    minibatches, checkpoint, timestep_batch: as for ddpo (the minibatches split the B·G
    trajectories; several trained steps share one denoiser call on the sd and sd3 families).
    guard: GRPO-Guard's regulated ratio and 1/|dt| step weights (flow samplers only)."""

    name = "grpo"

    def __init__(
        self,
        group_size: int = 4,
        beta: float = 0.0,
        clip_range: float = 1e-4,
        adv_clip_max: float = 5.0,
        timestep_fraction: float = 1.0,
        inner_epochs: int = 1,
        minibatches: int = 1,
        checkpoint: bool = True,
        timestep_selection: str = "random",
        guard: bool = False,
        timestep_batch: int | str = "auto",
    ) -> None:
        if not isinstance(guard, bool):
            raise ConfigError(f"estimator.guard must be true or false (GRPO-Guard's regulated ratio), got {guard!r}.")
        self.guard = guard
        self.group_size = _check_number("group_size", group_size, 2, integer=True)
        if timestep_selection not in ("random", "first"):
            raise ConfigError(
                f"estimator.timestep_selection must be 'random' (DDPO: a random subset of the steps per "
                f"update) or 'first' (Flow-GRPO: the first timestep_fraction of the steps, in order), "
                f"got {timestep_selection!r}."
            )
        self.first_steps = timestep_selection == "first"
        super().__init__(
            clip_range,
            adv_clip_max,
            timestep_fraction,
            inner_epochs,
            minibatches,
            checkpoint,
            kl_beta=float(_check_number("beta", beta, 0.0)),
            timestep_batch=timestep_batch,
        )
        self.queries_per_image = self.group_size

    def __repr__(self) -> str:
        return (
            f"GRPO(group_size={self.group_size}, beta={self.kl_beta}, clip_range={self.clip_range}, "
            f"timestep_fraction={self.timestep_fraction}{', timestep_selection=first' if self.first_steps else ''}, "
            f"inner_epochs={self.inner_epochs}, "
            f"minibatches={self.minibatches}"
            + (", guard=True" if self.guard else "")
            + (f", timestep_batch={self.timestep_batch}" if self.timestep_batch != "auto" else "")
            + ")"
        )

    def expand(self, inputs: StepInputs):
        """G copies of the batch: rows g·B .. (g+1)·B − 1 are copy g; copy 0 keeps the runner's noise."""
        batch = inputs.noise.shape[0]
        extra = inputs.model.make_noise((self.group_size - 1) * batch, inputs.generator, dtype=inputs.noise.dtype)
        return inputs.cond.repeat(self.group_size), torch.cat([inputs.noise, extra.to(inputs.noise.device)])

    def advantages(self, rewards: torch.Tensor, prompts: list[str]):
        grouped = rewards.view(self.group_size, -1)
        adv = group_advantages(grouped).flatten().to(rewards)
        return adv, {"reward_group_std": grouped.std(dim=0, unbiased=False).mean().item()}

    def report(self, rewards: torch.Tensor, batch: int) -> torch.Tensor:
        return rewards.view(self.group_size, batch).mean(dim=0)
