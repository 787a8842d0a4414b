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

from typing import TYPE_CHECKING  # noqa: E402

from draft_core.errors import DraftError  # noqa: E402

if TYPE_CHECKING:
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

# The protocols import torch and diffusers (seconds), and hookimpl the plugin package: loaded on first
# use, so that `draft --version` and `draft --help` answer without them (PEP 562).
_LAZY = {
    "hookimpl": "draft_core.plugins.hookspecs",
    **dict.fromkeys(
        ("Conditioning", "EstimatorOutput", "GradientEstimator", "Reward", "Sampler", "StepInputs"),
        "draft_core.plugins.protocols",
    ),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'draft_core' has no attribute {name!r}")


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
