"""draft plugin: the ``imagereward`` reward, ImageReward (Xu et al. 2023) as a differentiable score.

Registered through the ``draft`` entry point of the ``draft-rewards-imagereward`` distribution;
weights load on the first call, not at import.
"""

from __future__ import annotations

from draft_core import hookimpl
from draft_rewards_imagereward.reward import ImageRewardReward

__all__ = ["ImageRewardReward"]
__version__ = "0.1.0"


@hookimpl
def register_rewards(register):
    register("imagereward", ImageRewardReward)
