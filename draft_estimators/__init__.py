"""The paper's gradient estimators, registered through the same hooks any plugin uses.

draft (full backprop), draft-k (truncated), draft-lv (low variance), refl, dpg, direct-align
(SRPO), drtune, the reward-value estimators ddpo, grpo, mix-grpo and diffusion-nft (they need no
reward gradient), and the wrapper kl.
"""

from draft_core.plugins.hookspecs import hookimpl
from draft_estimators.ddpo import DDPO
from draft_estimators.direct_align import DirectAlign
from draft_estimators.dpg import DeterministicPolicyGradient
from draft_estimators.drtune import DRTune
from draft_estimators.grpo import GRPO
from draft_estimators.kl import KLRegularized
from draft_estimators.low_variance import LowVariance
from draft_estimators.mix_grpo import MixGRPO
from draft_estimators.nft import DiffusionNFT
from draft_estimators.refl import ReFL
from draft_estimators.truncated import FullBackprop, TruncatedBackprop


@hookimpl
def register_estimators(register) -> None:
    register("draft", FullBackprop)
    register("draft-k", TruncatedBackprop)
    register("draft-lv", LowVariance)
    register("refl", ReFL)
    register("dpg", DeterministicPolicyGradient)
    register("direct-align", DirectAlign)
    register("drtune", DRTune)
    register("ddpo", DDPO)
    register("grpo", GRPO)
    register("mix-grpo", MixGRPO)
    register("diffusion-nft", DiffusionNFT)
    register("kl", KLRegularized)  # a wrapper: `kl: β` beside any estimator's name


__all__ = [
    "DDPO",
    "GRPO",
    "DRTune",
    "DeterministicPolicyGradient",
    "DiffusionNFT",
    "DirectAlign",
    "FullBackprop",
    "KLRegularized",
    "LowVariance",
    "MixGRPO",
    "ReFL",
    "TruncatedBackprop",
]
