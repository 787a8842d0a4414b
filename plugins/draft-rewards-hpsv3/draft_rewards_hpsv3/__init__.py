"""draft plugin: the ``hpsv3`` reward, HPSv3 (Ma et al. 2025, MizzenAI/HPSv3) as a differentiable score.

Registered through the ``draft`` entry point of the ``draft-rewards-hpsv3`` distribution;
weights load on the first call, not at import.
"""

from __future__ import annotations

from draft_core import hookimpl
from draft_rewards_hpsv3.reward import HPSv3Reward

__all__ = ["HPSv3Reward"]
__version__ = "0.1.0"


@hookimpl
def register_rewards(register):
    register("hpsv3", HPSv3Reward)
