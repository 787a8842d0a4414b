r"""GRPO-Guard's regulated ratio (Wang et al. 2025, arXiv 2510.22319): the ``guard: true`` option of ``grpo`` and ``mix-grpo``.

A flow-SDE step draws x_s = μ_old + s·ε (μ_old the sampling policy's mean, s its std, ε standard
normal). With Δμ = μ_θ − μ_old, the PPO log-ratio of the step's Gaussians (mean over elements) is::

    log ρ = mean_e(ε ⊙ Δμ)/s − mean_e(Δμ²)/(2s²)

Its second term is never positive, so ρ is biased below 1 as soon as the policy moves, most at the
low-noise steps where s is small, and the scale of log ρ changes from step to step by 1/s. Positive-
advantage samples then rarely reach the upper clip, and training over-optimises the proxy reward.
The guard removes both: per sample b = mean_e(Δμ²)/(2s²) (RatioNorm) and ::

    ρ̃ = exp((log ρ + b)·s) = exp(mean_e(ε ⊙ Δμ)),    L_step = mean_b max(−A·ρ̃, −A·clip(ρ̃, 1 ± clip_range)) / |dt|

the division by the step's |dt| = σ_t − σ_s re-balancing the steps' gradients (μ_θ depends on the
velocity through dt). The estimator stores μ_old of every step at sampling time, so the ratio is the
one above for any number of updates on a sampled batch.

Parity with the reference code (Flow-GRPO's ``train_sd3_GRPO_Guard.py``): there the mean that was
meant to give b per sample runs over a 1-D tensor with an empty dimension list, which PyTorch reads as
"every dimension", so b is one number, the batch's average of the per-sample values. Each sample's
ratio is then its unbiased value times exp(s·(b̄ − b_i)): a sample whose policy mean moved more than
the batch's average gets a ratio too small, one that moved less a ratio too large. Here b is each
sample's own (as Flow-Factory and verl-omni also compute it). The reference's clip range is about
2e-6 with this ratio (``clip_range`` here; the default 1e-4 is GRPO's); it samples with ``flow-sde``
only (``cps`` works here too: its step is a Gaussian with std s as well, and |dt| is the schedule's).
The guard needs a flow-matching sampler: the |dt| weight is defined on the flow schedule.
"""

from __future__ import annotations

import torch

from draft_core.errors import ConfigError


def guarded_log_ratio(mean: torch.Tensor, mean_old: torch.Tensor, x_next: torch.Tensor, std: torch.Tensor | float):
    """log ρ̃ per sample, [B]: mean_e(ε ⊙ (μ_θ − μ_old)) with ε = (x_next − μ_old)/std (x_next, μ_old detached)."""
    eps = (x_next.detach() - mean_old.detach()) / std
    return (eps * (mean - mean_old.detach())).flatten(1).mean(1)


def step_weight(sampler, model, step: int) -> float:
    """1/|dt| of ``step``: 1/(σ_step − σ_{step+1}) on the sampler's flow schedule."""
    sigmas = sampler.scheduler(model).sigmas
    return 1.0 / float(sigmas[step] - sigmas[step + 1])


def check_guard_sampler(name: str, sampler) -> None:
    """The guard's 1/|dt| weight is the flow schedule's: refuse a diffusion sampler (ConfigError)."""
    if not getattr(sampler, "flow_matching", False):
        raise ConfigError(
            f"estimator '{name}' with guard: true needs a flow-matching sampler (flow-sde or cps with eta > 0): "
            f"GRPO-Guard normalises each step's ratio by the flow SDE's step std and weights the step by 1/|dt| of "
            f"the flow schedule, which a diffusion sampler does not have; got {sampler!r}. Use guard: false with ddim "
            f"or ddpm."
        )
