"""draft: fine-tune text-to-image diffusion models on differentiable rewards (DRaFT).

Public surface: ``hookimpl`` for plugins, the three protocols, and ``DraftError``.
"""

import logging as _logging


class _DropTorchaoEnumNotice(_logging.Filter):
    """torchao (the ``model.quantize: int8`` backend), which transformers imports whenever it is
    installed, registers enums with torch's pytree at import, and torch 2.14 logs a deprecation
    warning for each: two lines on every command's stderr that say nothing to draft's users."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "register_constant() on Enum subclasses is deprecated" not in record.getMessage()


class _DropTorchaoTensorNotice(_logging.Filter):
    """diffusers' torchao quantizer warns at import that it cannot import torchao tensor classes it
    lists for loading torchao-serialized checkpoints (the list is torchao-version-specific); draft
    quantizes loaded weights and never loads such checkpoints."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "Unable to import `torchao` Tensor objects" not in record.getMessage()


_logging.getLogger("torch.utils._pytree").addFilter(_DropTorchaoEnumNotice())
_logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").addFilter(_DropTorchaoTensorNotice())

from draft_core.errors import DraftError  # noqa: E402
from draft_core.plugins.hookspecs import hookimpl  # noqa: E402
from draft_core.plugins.protocols import (  # noqa: E402
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
