r"""DiffusionNFT (Zheng et al. 2025, "DiffusionNFT: Online Diffusion Reinforcement with Forward Process", arXiv 2509.16117).

Policy optimisation on the forward (noising) process of a flow model: no log-probabilities, no SDE,
any sampler. Each call samples G images per prompt with the *old* policy v_old (a slowly moving copy
of the LoRA, ``on_optimizer_step``), scores them (the reward's values only), and turns each reward
into an optimality probability r ∈ [0, 1]::

    A = (R − mean_group R) / (std_batch R + 1e-4),      r = clip(0.5 + clip(A, ±c)/(2c), 0, 1)

(c = ``adv_clip_max``). Then, for K of the sampler's noise levels σ per sample (a random order of the
steps, the first K = max(1, int(timestep_fraction·N))), with fresh noise ε, x_σ = (1 − σ)·x0 + σ·ε
and the implicit positive and negative policies mixed from the current and the old velocity::

    v⁺ = β·v_θ + (1 − β)·v_old,      v⁻ = (1 + β)·v_old − β·v_θ,      x̂0± = x_σ − σ·v±
    w± = sg(max(mean_e |x̂0± − x0|, 1e-5))
    L  = c·mean_b[(r·mean_e(x̂0⁺ − x0)²/w⁺ + (1 − r)·mean_e(x̂0⁻ − x0)²/w⁻)/β] + λ·mean_b mean_e(v_θ − v_ref)²

averaged over the K levels; v_old and v_ref (the base model, LoRA off) carry no gradient. The
gradient pulls v_θ toward the high-reward samples (r > 1/2) and away from the low ones. All
velocities are conditional only (CFG-free), whatever the sampler's guidance. The old policy is
updated after every applied optimiser step k: θ_old ← d·θ_old + (1 − d)·θ with d = min(0.001·k, 0.5)
(``decay: linear``, the reference's default) or d = 0 for k < 75, min(0.0075·(k − 75), 0.999) after
(``decay: delayed``, its OCR setting); it starts equal to θ.

Parity with the reference code (NVlabs/DiffusionNFT): its loss is written in x0-space as here (the
paper writes the v-space form); ``beta`` is its ``config.beta`` (1.0; 0.1 in its OCR and multi-reward
configs) and ``kl_weight`` its ``config.train.beta`` (1e-4); the reward std is over the batch of this
process (the reference gathers every GPU's batch). It samples with its old model, CFG-free
(``guidance_scale: 1.0`` on the sampler for the same) and a deterministic 2nd-order solver in 10 steps;
any sampler works here (``euler`` is the deterministic one). It trains 9 of 10 steps per sample with
one backward pass each; here one call's loss is their average (with ``checkpoint``, one step's
activations in memory at a time).

Flow-matching models only: the loss is written for the velocity of x_σ = (1 − σ)·x0 + σ·ε.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from draft_core.errors import ConfigError
from draft_core.lora import adapters_enabled
from draft_core.plugins.bases import EstimatorBase
from draft_core.plugins.protocols import Conditioning, EstimatorOutput, StepInputs
from draft_estimators.policy import _check_number

DECAYS = ("linear", "delayed")


def optimality(rewards: torch.Tensor, group_size: int, clip: float) -> torch.Tensor:
    """[G·B] rewards (copy g of prompt k at row g·B + k) -> r in [0, 1] (module docstring)."""
    grouped = rewards.detach().double().view(group_size, -1)
    adv = (grouped - grouped.mean(dim=0)) / (grouped.std(unbiased=False) + 1e-4)
    return (0.5 + adv.clamp(-clip, clip) / (2 * clip)).clamp(0, 1).flatten()


class DiffusionNFT(EstimatorBase):
    """group_size: samples per prompt (G >= 2). beta: the NFT mixing β (> 0). kl_weight: λ of the
    velocity penalty to the base model (0: none, no extra forward pass). adv_clip_max: c.
    timestep_fraction: the fraction of the sampler's steps trained per sample. decay: the old
    policy's schedule (linear or delayed). checkpoint: recompute each level's forward pass in the
    backward pass."""

    name = "diffusion-nft"
    needs_reward_gradient = False

    def __init__(
        self,
        group_size: int = 4,
        beta: float = 1.0,
        kl_weight: float = 1e-4,
        adv_clip_max: float = 5.0,
        timestep_fraction: float = 0.99,
        decay: str = "linear",
        checkpoint: bool = True,
    ) -> None:
        self.group_size = _check_number("group_size", group_size, 2, integer=True)
        self.beta = float(_check_number("beta", beta, 0.0, open_low=True))
        self.kl_weight = float(_check_number("kl_weight", kl_weight, 0.0))
        self.adv_clip_max = float(_check_number("adv_clip_max", adv_clip_max, 0.0, open_low=True))
        self.timestep_fraction = float(_check_number("timestep_fraction", timestep_fraction, 0.0, 1.0, open_low=True))
        if decay not in DECAYS:
            raise ConfigError(
                f"estimator.decay must be one of {', '.join(DECAYS)} (the old policy's update schedule), got {decay!r}."
            )
        if not isinstance(checkpoint, bool):
            raise ConfigError(f"estimator.checkpoint must be true or false, got {checkpoint!r}.")
        self.decay, self.checkpoint = decay, checkpoint
        self.params: list[torch.nn.Parameter] | None = None
        self.old: list[torch.Tensor] | None = None  # θ_old, one tensor per trainable parameter
        self.updates = 0  # applied optimiser steps (the decay's clock)

    def __repr__(self) -> str:
        return (
            f"DiffusionNFT(group_size={self.group_size}, beta={self.beta}, kl_weight={self.kl_weight}, "
            f"adv_clip_max={self.adv_clip_max}, timestep_fraction={self.timestep_fraction}, decay={self.decay!r})"
        )

    def check(self, sampler) -> None:
        if not getattr(sampler, "flow_matching", False):
            raise ConfigError(
                f"estimator 'diffusion-nft' trains on the forward process of flow matching (x = (1 − σ)·x0 + σ·noise, "
                f"the model predicting the velocity), so it needs a flow-matching model and sampler (euler, flow-sde or "
                f"cps), got {sampler!r}; for a diffusion model use grpo or ddpo, which also need no reward gradient."
            )

    # -- the old policy ------------------------------------------------------------------------------
    def decay_at(self, step: int) -> float:
        """d after ``step`` applied optimiser steps."""
        if self.decay == "linear":
            return min(0.001 * step, 0.5)
        return 0.0 if step < 75 else min(0.0075 * (step - 75), 0.999)

    def _bind(self, model) -> None:
        if self.params is None:
            self.params = [p for p in model.denoiser.parameters() if p.requires_grad]
        if self.old is None:
            self.old = [p.detach().clone() for p in self.params]
        elif self.old[0].device != self.params[0].device:  # restored from a checkpoint (on the CPU)
            self.old = [o.to(p.device, p.dtype) for o, p in zip(self.old, self.params)]

    @contextmanager
    def old_weights(self) -> Iterator[None]:
        """θ_old in the trainable parameters (without autograd), θ put back on exit. Entered only before any
        forward pass the loss differentiates: the swap writes the parameters in place."""
        assert self.params is not None and self.old is not None
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            try:
                for p, o in zip(self.params, self.old):
                    p.copy_(o)
                yield
            finally:
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def on_optimizer_step(self, applied: bool) -> None:
        if not applied or self.params is None or self.old is None:
            return
        self.updates += 1
        d = self.decay_at(self.updates)
        with torch.no_grad():
            for o, p in zip(self.old, self.params):
                o.mul_(d).add_(p.detach(), alpha=1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"nft.updates": torch.tensor(self.updates)}
        if self.old is not None:
            state.update({f"nft.old.{i}": o.detach().to("cpu", copy=True) for i, o in enumerate(self.old)})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.updates = int(state.get("nft.updates", 0))
        old = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in state.items() if k.startswith("nft.old."))
        self.old = [v for _, v in old] or None

    # -- one call --------------------------------------------------------------------------------------
    def sample_batch(self, inputs: StepInputs) -> tuple[Conditioning, torch.Tensor, torch.Tensor, torch.Tensor]:
        """G samples per prompt by the old policy: (cond [N], x0 [N, ...], rewards [N], images [N, ...]), N = G·B."""
        model, sampler = inputs.model, inputs.sampler
        self._bind(model)
        batch = inputs.noise.shape[0]
        extra = model.make_noise((self.group_size - 1) * batch, inputs.generator, dtype=inputs.noise.dtype)
        cond, noise = inputs.cond.repeat(self.group_size), torch.cat([inputs.noise, extra.to(inputs.noise.device)])
        with self.old_weights():
            x0 = sampler.sample(model, cond, noise, generator=inputs.generator)
        with torch.no_grad():
            images = model.decode(x0)
            rewards = inputs.reward(images, cond.prompts).detach().float()
        return cond.detach(), x0.detach(), rewards, images.detach()

    def draw_levels(
        self, x0: torch.Tensor, num_steps: int, generator: torch.Generator
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """K (step index [N], noise ε [N, ...]) pairs: a random order of the steps per sample, fresh noise per level."""
        n = x0.shape[0]
        k = max(1, int(self.timestep_fraction * num_steps))
        order = torch.stack([torch.randperm(num_steps, generator=generator) for _ in range(n)])[:, :k]
        device = generator.device
        return [
            (order[:, j], torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device))
            for j in range(k)
        ]

    def loss(
        self,
        model,
        sampler,
        cond: Conditioning,
        x0: torch.Tensor,
        r: torch.Tensor,
        levels: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The NFT loss (module docstring) of samples ``x0`` [N, ...] with optimality ``r`` [N], averaged over ``levels``."""
        self._bind(model)
        sched = sampler.scheduler(model)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        r = r.to(x0.device, x0.dtype)
        total, penalties = torch.zeros((), device=x0.device, dtype=x0.dtype), []
        points = []
        for idx, eps in levels:
            idx = idx.to(sched.sigmas.device)
            sigma = sched.sigmas[idx].to(x0.device, x0.dtype).view(shape)
            points.append((sigma, (1 - sigma) * x0 + sigma * eps, sched.timesteps[idx].to(x0.device)))
        with self.old_weights():
            olds = [model.denoise(x_t, t, cond, 1.0) for _, x_t, t in points]
        for (sigma, x_t, t), v_old in zip(points, olds):
            v_ref = None
            if self.kl_weight > 0:
                with torch.no_grad(), adapters_enabled(model.denoiser, False):
                    v_ref = model.denoise(x_t, t, cond, 1.0)

            def term(x_t, sigma=sigma, t=t, v_old=v_old, v_ref=v_ref):
                v = model.denoise(x_t, t, cond, 1.0)
                x0_pos = x_t - sigma * (self.beta * v + (1 - self.beta) * v_old)
                x0_neg = x_t - sigma * ((1 + self.beta) * v_old - self.beta * v)
                w_pos = (x0_pos - x0).abs().flatten(1).mean(1).clamp_min(1e-5).detach()
                w_neg = (x0_neg - x0).abs().flatten(1).mean(1).clamp_min(1e-5).detach()
                fit = (
                    r * (x0_pos - x0).pow(2).flatten(1).mean(1) / w_pos
                    + (1 - r) * (x0_neg - x0).pow(2).flatten(1).mean(1) / w_neg
                ) / self.beta
                penalty = (
                    (v - v_ref).pow(2).flatten(1).mean(1).mean() if v_ref is not None else torch.zeros_like(fit[0])
                )
                return self.adv_clip_max * fit.mean(), penalty

            fit, penalty = torch_checkpoint(term, x_t, use_reentrant=False) if self.checkpoint else term(x_t)
            total = total + fit + self.kl_weight * penalty
            penalties.append(penalty.detach())
        logs = {"nft_levels": float(len(levels)), "nft_ref_penalty": torch.stack(penalties).mean().item()}
        return total / len(levels), logs

    def __call__(self, inputs: StepInputs) -> EstimatorOutput:
        self.check(inputs.sampler)
        cond, x0, rewards, images = self.sample_batch(inputs)
        batch = inputs.noise.shape[0]
        reported = rewards.view(self.group_size, batch).mean(dim=0)
        if not torch.isfinite(rewards).all():  # the runner skips this update and blames the reward
            nan = torch.full((), float("nan"), device=x0.device)
            return EstimatorOutput(loss=nan, reward=reported, images=images[:batch], queries=self.group_size)
        r = optimality(rewards, self.group_size, self.adv_clip_max)
        levels = self.draw_levels(x0, inputs.sampler.num_steps, inputs.generator)
        loss, logs = self.loss(inputs.model, inputs.sampler, cond, x0, r, levels)
        logs.update(
            {
                "nft_optimality_mean_abs_dev": (r - 0.5).abs().mean().item(),
                "nft_old_decay": self.decay_at(self.updates),
                "reward_sampled_std": rewards.std().item(),
            }
        )
        return EstimatorOutput(loss=loss, reward=reported, images=images[:batch], queries=self.group_size, logs=logs)
