"""draft plugin: the ``nsfw`` reward, −(NSFW margin) of Stable Diffusion's safety checker (DRaFT B.11).

Registered through the ``draft`` entry point of the ``draft-rewards-nsfw`` distribution;
weights load on the first call, not at import.
"""

from __future__ import annotations

from draft_core import hookimpl
from draft_rewards_nsfw.reward import NSFWReward

__all__ = ["NSFWReward"]
__version__ = "0.1.0"


@hookimpl
def register_rewards(register):
    register("nsfw", NSFWReward)
