"""draft plugin: the ``owlvit`` reward, object addition or removal with OWL-ViT (DRaFT B.6).

Registered through the ``draft`` entry point of the ``draft-rewards-owlvit`` distribution;
weights load on the first call, not at import.
"""

from __future__ import annotations

from draft_core import hookimpl
from draft_rewards_owlvit.reward import OwlViTReward

__all__ = ["OwlViTReward"]
__version__ = "0.1.0"


@hookimpl
def register_rewards(register):
    register("owlvit", OwlViTReward)
