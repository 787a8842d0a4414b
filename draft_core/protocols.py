"""Public import path of the protocols (``from draft_core.protocols import Reward``); they live in ``draft_core.plugins.protocols``."""

from draft_core.plugins.protocols import (  # noqa: F401
    Conditioning,
    EstimatorOutput,
    GradientEstimator,
    Reward,
    Sampler,
    StepInputs,
)
