"""The paper's gradient estimators, registered through the same hooks any plugin uses.

draft (full backprop), draft-k (truncated), draft-lv (low variance), refl.
"""

from draft_core.hookspecs import hookimpl

from draft_estimators.low_variance import LowVariance
from draft_estimators.refl import ReFL
from draft_estimators.truncated import FullBackprop, TruncatedBackprop


@hookimpl
def register_estimators(register) -> None:
    register("draft", FullBackprop)
    register("draft-k", TruncatedBackprop)
    register("draft-lv", LowVariance)
    register("refl", ReFL)


__all__ = ["FullBackprop", "LowVariance", "ReFL", "TruncatedBackprop"]
