"""A weighted sum of rewards is itself a reward: ``{"pickscore": 10, "hpsv2": 2}``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from draft_core.plugins.bases import RewardBase, as_reward
from draft_core.plugins.protocols import Reward


class WeightedReward(RewardBase):
    """``r(images, prompts) = Σ_i w_i r_i(images, prompts)``, shape [B].

    terms: name -> (reward, weight). After each call, ``last_terms`` maps each name to
    that term's unweighted, detached values [B], so a runner can log every term.
    """

    def __init__(self, terms: dict[str, tuple[Reward, float]]) -> None:
        if not terms:
            raise ValueError("WeightedReward needs at least one (reward, weight) term, got none.")
        for name, term in terms.items():
            if not (isinstance(term, tuple) and len(term) == 2 and callable(term[0])):
                raise ValueError(f"WeightedReward term {name!r} must be a (reward, weight) pair, got {term!r}.")
            weight = term[1]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"WeightedReward term {name!r} needs a finite number as weight, got {weight!r}.")
        self.terms = {name: (reward, float(weight)) for name, (reward, weight) in terms.items()}
        self.last_terms = {}

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1]; returns [B]."""
        total = None
        last: dict[str, torch.Tensor] = {}
        for name, (reward, weight) in self.terms.items():
            values = reward(images, prompts)
            if values.shape != (images.shape[0],):
                raise ValueError(
                    f"reward {name!r} returned shape {list(values.shape)}; a reward must return [B] = "
                    f"[{images.shape[0]}]."
                )
            last[name] = values.detach()
            total = weight * values if total is None else total + weight * values
        self.last_terms = last
        return total

    @property
    def differentiable(self) -> bool:
        """A sum has a gradient only if every term has one (``Reward`` protocol)."""
        return all(as_reward(reward).differentiable for reward, _ in self.terms.values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{name!r}: ({reward!r}, {weight})" for name, (reward, weight) in self.terms.items())
        return f"WeightedReward({{{inner}}})"
