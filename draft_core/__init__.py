"""draft: fine-tune text-to-image diffusion models on differentiable rewards (DRaFT).

Public surface: ``hookimpl`` for plugins, the three protocols, and ``DraftError``.
"""

from draft_core.errors import DraftError
from draft_core.plugins.hookspecs import hookimpl
from draft_core.plugins.protocols import (
    Conditioning,
    EstimatorOutput,
    GradientEstimator,
    Reward,
    Sampler,
    StepInputs,
)

__version__ = "0.1.0"

__all__ = [
    "Conditioning",
    "DraftError",
    "EstimatorOutput",
    "GradientEstimator",
    "Reward",
    "Sampler",
    "StepInputs",
    "hookimpl",
    "__version__",
]
