"""Log-densities of a stochastic sampler's Gaussian steps, for policy-gradient estimators.

A stochastic sampling step draws x_{i+1} ~ N(mean, std² I), where ``mean`` depends on the
model (and its LoRA) and ``std`` only on the schedule. Samplers expose that Gaussian as
``transition_distribution(model, x_i, step, cond) -> (mean, std)`` (see the ``Sampler``
protocol); these functions turn it into what DDPO and GRPO train on.

Per-sample values are the *mean* over the sample's elements, not their sum: that is
DDPO's convention (and Flow-GRPO's), which keeps a step's log-probability O(1) whatever
the resolution, so that their PPO clip range of 1e-4 means the same thing everywhere.
``reduction="sum"`` gives the full log-density.
"""

from __future__ import annotations

import math

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    dims = tuple(range(1, values.ndim))
    if reduction == "mean":
        return values.mean(dim=dims)
    if reduction == "sum":
        return values.sum(dim=dims)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")


def log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float, reduction: str = "mean") -> torch.Tensor:
    """log N(x; mean, std²) per sample, [B]: the mean (default) or sum over the non-batch dims.

    x, mean: [B, ...]; std: a positive scalar or a tensor broadcastable to ``mean``. ``x`` is
    data (a stored trajectory's next state): it is detached, so gradients reach ``mean`` only.
    """
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    values = -((x.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return _reduce(values, reduction)


def kl_same_std(
    mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor | float, reduction: str = "mean"
) -> torch.Tensor:
    """KL(N(mean_p, std²) ‖ N(mean_q, std²)) per sample, [B] (same reduction as ``log_prob``).

    Two steps of the same schedule share their std, so the KL is ‖mean_p − mean_q‖² / (2 std²).
    """
    std = torch.as_tensor(std, dtype=mean_p.dtype, device=mean_p.device)
    return _reduce((mean_p - mean_q) ** 2 / (2 * std**2), reduction)


def is_stochastic(std: torch.Tensor | float) -> bool:
    """Whether a step with this std draws noise at all (std 0: a deterministic step, no density)."""
    return bool(torch.as_tensor(std).min() > 0)
