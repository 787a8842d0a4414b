"""Test helpers for plugin authors: ``RewardConformance`` (here) and ``EstimatorConformance``
(``draft_core.testing.estimators``), pytest fixtures (``fixtures``) and preprocessing parity (``parity``)."""

from draft_core.testing.rewards import RewardConformance, assert_plugin_listed

__all__ = ["RewardConformance", "assert_plugin_listed"]
