"""Differentiable versions of the OWL-ViT and OWLv2 image processors of transformers.

OWL-ViT (``OwlViTImageProcessor``): a square bicubic resize to the model's image size
(768 for the base models; the aspect ratio is not kept), rescale, CLIP normalisation:
``draft_core.rewarding.preprocess.OWLVIT_768`` at the model's size.

OWLv2 (``Owlv2ImageProcessor``): pad bottom/right to a square with black, then
scikit-image's resize as the processor reimplements it: a Gaussian blur with
sigma = (factor - 1) / 2 per axis when shrinking (none when enlarging), a bilinear resize
without further anti-aliasing, and CLIP normalisation. Both steps are torch ops here, so
gradients reach the pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from draft_core.rewarding.preprocess import CLIP_MEAN, CLIP_STD, OWLVIT_768, normalize, pad_to


def owlv2_preprocess(images: torch.Tensor, size: int = 960) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> [B, 3, size, size], as ``Owlv2ImageProcessor`` does it."""
    side = max(images.shape[-2:])
    x = pad_to(images, side, side, center=False, value=0.0)
    sigma = max((side / size - 1) / 2, 0.0)
    if sigma > 0:
        kernel = 2 * math.ceil(3 * sigma) + 1
        x = gaussian_blur(x, [kernel, kernel], [sigma, sigma])
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return normalize(x, CLIP_MEAN, CLIP_STD)


def preprocess_for(config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The preprocessing of an ``OwlViTConfig`` or ``Owlv2Config`` (its vision image size)."""
    size = config.vision_config.image_size
    if config.model_type == "owlv2":
        return lambda images: owlv2_preprocess(images, size)
    return OWLVIT_768.with_size(size)
