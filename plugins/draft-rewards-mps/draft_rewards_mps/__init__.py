"""draft plugin: the ``mps`` reward, the Multi-dimensional Preference Score (overall) as a differentiable score.

Registered through the ``draft`` entry point of the ``draft-rewards-mps`` distribution;
weights load on the first call, not at import.
"""

from __future__ import annotations

from draft_core import hookimpl
from draft_rewards_mps.reward import MPSReward

__all__ = ["MPSReward"]
__version__ = "0.1.0"


@hookimpl
def register_rewards(register):
    register("mps", MPSReward)
