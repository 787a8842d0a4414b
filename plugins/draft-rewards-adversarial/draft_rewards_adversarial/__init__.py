"""draft plugin: the ``adversarial`` reward, −cross-entropy of an ImageNet ResNet-50 to a target class (DRaFT B.4).

Registered through the ``draft`` entry point of the ``draft-rewards-adversarial``
distribution; weights load on the first call, not at import.
"""

from __future__ import annotations

from draft_core import hookimpl
from draft_rewards_adversarial.reward import AdversarialReward

__all__ = ["AdversarialReward"]
__version__ = "0.1.0"


@hookimpl
def register_rewards(register):
    register("adversarial", AdversarialReward)
