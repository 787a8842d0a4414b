"""Built-in rewards, registered through the ``draft`` entry points like any plugin.

JPEG compressibility / incompressibility (kornia's differentiable codec), rotational
anti-correlation, and the digit classifier of the embedded ``digits`` model (its small
weights ship in ``assets/`` and load on first call), so importing is cheap.
"""

from __future__ import annotations

from draft_core import hookimpl
from draft_rewards.digits import DigitClassifier
from draft_rewards.jpeg import JpegCompressibility, JpegIncompressibility
from draft_rewards.rotation import RotationAnticorrelation

__all__ = ["DigitClassifier", "JpegCompressibility", "JpegIncompressibility", "RotationAnticorrelation"]


@hookimpl
def register_rewards(register):
    register("jpeg-compressibility", JpegCompressibility)
    register("jpeg-incompressibility", JpegIncompressibility)
    register("rotation-anticorrelation", RotationAnticorrelation)
    register("digit-classifier", DigitClassifier)
