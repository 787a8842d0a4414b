"""draft plugin: the ``aesthetic-v25`` reward, Aesthetic Predictor V2.5 (SigLIP) as a differentiable score.

Registered through the ``draft`` entry point of the ``draft-rewards-aesthetic-v25``
distribution; weights load on the first call, not at import.
"""

from __future__ import annotations

from draft_core import hookimpl
from draft_rewards_aesthetic_v25.reward import AestheticV25Reward

__all__ = ["AestheticV25Reward"]
__version__ = "0.1.0"


@hookimpl
def register_rewards(register):
    register("aesthetic-v25", AestheticV25Reward)
