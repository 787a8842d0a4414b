"""Whether a reward has a gradient, whether an estimator needs one, and the check between them.

A reward declares ``differentiable = False`` when it is a black box (a real encoder's file
size, an OCR or detector count, a judge model); absent means True (``RewardBase``). An estimator declares
``needs_reward_gradient = False`` when it uses reward values only (ddpo, grpo); absent
means True (``EstimatorBase``) (draft, draft-k, draft-lv, refl and dpg backpropagate the reward). The check
runs at config time, before any model loads.
"""

from __future__ import annotations

from typing import Any

from draft_core.errors import ConfigError
from draft_core.plugins.bases import as_estimator, as_reward


def is_differentiable(reward: Any) -> bool:
    return bool(as_reward(reward).differentiable)


def needs_reward_gradient(estimator: Any) -> bool:
    """Of an estimator, or of its factory (a class attribute)."""
    return bool(as_estimator(estimator).needs_reward_gradient)


def check_reward_gradient(estimator: Any, estimator_name: str, terms: dict[str, Any], registry) -> None:
    """Raise ConfigError when ``estimator`` needs a reward gradient that a term of ``terms`` (name -> reward) lacks."""
    if not needs_reward_gradient(estimator):
        return
    rigid = [name for name, reward in terms.items() if not is_differentiable(reward)]
    if not rigid:
        return
    working = sorted(e.name for e in registry.entries("estimator") if not needs_reward_gradient(e.factory))
    which = f"reward '{rigid[0]}'" if len(terms) == 1 else f"the reward term(s) {', '.join(repr(r) for r in rigid)}"
    raise ConfigError(
        f"{which} has no gradient (it declares differentiable = False), but estimator '{estimator_name}' "
        f"backpropagates the reward's gradient into the model. Use an estimator that needs only reward values: "
        f"{', '.join(working) or '(none installed)'} (ddpo and the grpo ones with a stochastic sampler: ddpm, ddim with "
        f"eta > 0, flow-sde or cps; diffusion-nft with any flow sampler), "
        f"or a differentiable reward (for JPEG size, jpeg-compressibility is the differentiable stand-in)."
    )
