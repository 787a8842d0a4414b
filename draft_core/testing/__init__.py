"""Test helpers for plugin authors: ``RewardConformance`` (here), ``EstimatorConformance``
(``draft_core.testing.estimators``), ``ModelFamilyConformance`` (``draft_core.testing.families``), pytest
fixtures (``fixtures``) and preprocessing parity (``parity``).

The checklists' plain ``assert`` statements show their values when they fail: the modules are
registered for pytest's assertion rewriting here, before they are first imported (under pytest,
importing any of them imports this package first).
"""

import pytest

pytest.register_assert_rewrite(
    "draft_core.testing.rewards", "draft_core.testing.estimators", "draft_core.testing.families"
)

from draft_core.testing.families import ModelFamilyConformance  # noqa: E402
from draft_core.testing.rewards import (  # noqa: E402
    RewardConformance,
    assert_planned_like_measured,
    assert_plugin_listed,
)

__all__ = ["ModelFamilyConformance", "RewardConformance", "assert_planned_like_measured", "assert_plugin_listed"]
