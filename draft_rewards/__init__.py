"""Built-in rewards, registered through the ``draft`` entry points like any plugin.

JPEG compressibility / incompressibility (kornia's differentiable codec), the real JPEG
encoder's file size (``jpeg-size``, ``jpeg-size-inverse``: no gradient, for ddpo/grpo), rotational
anti-correlation, the digit classifier of the embedded ``digits`` model, ink coverage (bolder
strokes), and the learned rewards on pretrained networks: ``aesthetic`` (LAION aesthetic
predictor), ``hpsv2``, ``pickscore``, ``clip-score``, plus the in-batch ``diversity`` term.
Weights load on the first call, never at import or construction, so importing is cheap.
"""

from __future__ import annotations

from draft_core import hookimpl
from draft_rewards.aesthetic import Aesthetic
from draft_rewards.clip_score import ClipScore, PickScore
from draft_rewards.digits import DigitClassifier
from draft_rewards.diversity import Diversity
from draft_rewards.hpsv2 import HPSv2
from draft_rewards.ink import InkCoverage
from draft_rewards.jpeg import JpegCompressibility, JpegIncompressibility
from draft_rewards.jpeg_size import JpegSize, JpegSizeInverse
from draft_rewards.remote import RemoteReward
from draft_rewards.rotation import RotationAnticorrelation

__all__ = [
    "Aesthetic",
    "ClipScore",
    "DigitClassifier",
    "Diversity",
    "HPSv2",
    "InkCoverage",
    "JpegCompressibility",
    "JpegIncompressibility",
    "JpegSize",
    "JpegSizeInverse",
    "PickScore",
    "RemoteReward",
    "RotationAnticorrelation",
]


@hookimpl
def register_rewards(register):
    register("jpeg-compressibility", JpegCompressibility)
    register("jpeg-incompressibility", JpegIncompressibility)
    register("jpeg-size", JpegSize)
    register("jpeg-size-inverse", JpegSizeInverse)
    register("rotation-anticorrelation", RotationAnticorrelation)
    register("digit-classifier", DigitClassifier)
    register("ink-coverage", InkCoverage)
    register("aesthetic", Aesthetic)
    register("hpsv2", HPSv2)
    register("pickscore", PickScore)
    register("clip-score", ClipScore)
    register("diversity", Diversity)
    register("remote", RemoteReward)  # a reward served by `draft reward serve`
