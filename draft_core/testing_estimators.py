"""Public import path of ``EstimatorConformance``; it lives in ``draft_core.testing.estimators``."""

from draft_core.testing.estimators import EstimatorConformance  # noqa: F401
