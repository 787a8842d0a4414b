"""The paper's gradient estimators, registered through the same hooks any plugin uses.

draft (full backprop), draft-k (truncated), draft-lv (low variance), refl, dpg.
"""

from draft_core.hookspecs import hookimpl

from draft_estimators.dpg import DeterministicPolicyGradient
from draft_estimators.low_variance import LowVariance
from draft_estimators.refl import ReFL
from draft_estimators.truncated import FullBackprop, TruncatedBackprop


@hookimpl
def register_estimators(register) -> None:
    register("draft", FullBackprop)
    register("draft-k", TruncatedBackprop)
    register("draft-lv", LowVariance)
    register("refl", ReFL)
    register("dpg", DeterministicPolicyGradient)


__all__ = ["DeterministicPolicyGradient", "FullBackprop", "LowVariance", "ReFL", "TruncatedBackprop"]
