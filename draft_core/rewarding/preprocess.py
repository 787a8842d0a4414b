"""Differentiable image preprocessing that mirrors the official processors of reward models.

Rewards take images [B, 3, H, W] in [0, 1]; their networks were trained on inputs made by
PIL-based processors (transformers' ``CLIPImageProcessor``, open_clip's transforms,
torchvision's weight transforms). ``ImagePreprocess`` does the same resize, crop, pad and
normalisation with torch ops, so gradients reach the pixels. Torch's anti-aliased bicubic
and bilinear interpolation follow PIL's filters; the remaining difference from an official
processor on a real photograph is its uint8 rounding (tested per reward).

Presets name the processors they mirror: ``CLIP_224`` (CLIPImageProcessor for ViT-B/L/H at
224: shortest edge bicubic, centre crop), ``OPEN_CLIP_LONGEST_224`` (HPSv2's
resize-longest-and-pad), ``OWLVIT_768`` (square bicubic resize), ``IMAGENET_V1`` / ``IMAGENET_V2`` (torchvision ResNet-50 weights).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Resize = Literal["shortest", "longest", "exact"]
Mode = Literal["bicubic", "bilinear"]


def resize(
    images: torch.Tensor,
    size: tuple[int, int],
    mode: Mode = "bicubic",
    antialias: bool = True,
    two_pass: bool = False,
) -> torch.Tensor:
    """Resize [B, C, H, W] to ``size`` (h, w); a no-op when already that size.

    two_pass: resize the width, clip to [0, 1], then the height, as PIL does (its first
    pass is stored as uint8, which clips the overshoot of bicubic filters). On
    scikit-image's photos this takes the largest difference from OwlViTImageProcessor's
    768 bicubic enlargement from 11 to 1.1 grey levels.
    Computes in float32 at least (bf16 interpolation is coarse) and returns the input dtype.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    dtype = images.dtype
    x = images if dtype in (torch.float32, torch.float64) else images.float()
    if two_pass and x.shape[-1] != size[1] and x.shape[-2] != size[0]:
        x = F.interpolate(x, size=(x.shape[-2], size[1]), mode=mode, align_corners=False, antialias=antialias)
        x = x.clamp(0, 1)
    out = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)
    return out.to(dtype)


def resize_shortest(
    images: torch.Tensor, size: int, mode: Mode = "bicubic", antialias: bool = True, two_pass: bool = False
) -> torch.Tensor:
    """Scale so that the shorter side is ``size``, keeping the aspect ratio (rounding like PIL processors)."""
    h, w = images.shape[-2:]
    if h <= w:
        new = (size, int(size * w / h))
    else:
        new = (int(size * h / w), size)
    return resize(images, new, mode, antialias, two_pass)


def resize_longest(
    images: torch.Tensor, size: int, mode: Mode = "bicubic", antialias: bool = True, two_pass: bool = False
) -> torch.Tensor:
    """Scale so that the longer side is ``size``, keeping the aspect ratio."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    new = (round(h * scale), round(w * scale))
    return resize(images, new, mode, antialias, two_pass)


def center_crop(images: torch.Tensor, size: int, rounding: Literal["round", "floor"] = "round") -> torch.Tensor:
    """Central ``size`` x ``size`` crop.

    rounding: ``round`` for torchvision's ``center_crop`` (open_clip, ImageNet weights),
    ``floor`` for transformers' image processors.
    """
    h, w = images.shape[-2:]
    if h < size or w < size:
        images = pad_to(images, max(h, size), max(w, size), center=True)
        h, w = images.shape[-2:]
    if rounding == "floor":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return images[..., top : top + size, left : left + size]


def pad_to(images: torch.Tensor, height: int, width: int, *, center: bool, value: float = 0.0) -> torch.Tensor:
    """Pad to (height, width) with ``value``: centred, or on the bottom/right only."""
    h, w = images.shape[-2:]
    dh, dw = height - h, width - w
    if dh == 0 and dw == 0:
        return images
    if center:
        top, left = dh // 2, dw // 2
        pads = (left, dw - left, top, dh - top)
    else:
        pads = (0, dw, 0, dh)
    return F.pad(images, pads, value=value)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - m) / s


@dataclass(frozen=True)
class ImagePreprocess:
    """One processor's recipe: resize, then crop or pad to ``size``, then normalise.

    resize: ``shortest`` (shorter side to ``resize_to``, then centre crop ``size``),
    ``longest`` (longer side to ``size``, then pad to a square: centred, or bottom/right
    when ``pad_center`` is false), or ``exact`` (straight to ``size`` x ``size``, aspect not
    kept). OWLv2's processor (pad first, Gaussian blur when shrinking) is not a recipe here:
    the owlvit plugin has its own. ``crop_rounding``: ``floor``
    for transformers processors, ``round`` for torchvision transforms. ``clamp`` clips the
    resized image to [0, 1] as PIL's uint8 output does (bicubic overshoots at edges), after
    each of PIL's two passes (width, then height): on scikit-image's photos this takes the
    largest difference from CLIPImageProcessor from 15/255 to 1.03/255 (mean 0.3/255; the
    rest is PIL's rounding to uint8), and from torchvision's ImageNet transforms to 1/255.
    """

    size: int = 224
    resize: Resize = "shortest"
    resize_to: int | None = None
    mode: Mode = "bicubic"
    antialias: bool = True
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    pad_center: bool = True
    crop_rounding: Literal["round", "floor"] = "round"
    clamp: bool = True

    def with_size(self, size: int) -> ImagePreprocess:
        """The same recipe at another input size (the crop scales with it)."""
        resize_to = None if self.resize_to is None else round(self.resize_to * size / self.size)
        return replace(self, size=size, resize_to=resize_to)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, 3, size, size] normalised model input, differentiably."""
        x = images
        if self.resize == "shortest":
            x = resize_shortest(x, self.resize_to or self.size, self.mode, self.antialias, self.clamp)
            x = center_crop(x, self.size, self.crop_rounding)
        elif self.resize == "longest":
            x = resize_longest(x, self.size, self.mode, self.antialias, self.clamp)
            x = pad_to(x, self.size, self.size, center=self.pad_center)
        elif self.resize == "exact":
            x = resize(x, (self.size, self.size), self.mode, self.antialias, self.clamp)
        else:  # pragma: no cover - guarded by the Literal type
            raise ValueError(f"resize must be 'shortest', 'longest' or 'exact', got {self.resize!r}.")
        if self.clamp:
            x = x.clamp(0, 1)
        return normalize(x, self.mean, self.std)


CLIP_224 = ImagePreprocess(size=224, resize="shortest", mode="bicubic", crop_rounding="floor")
OPEN_CLIP_224 = ImagePreprocess(size=224, resize="shortest", mode="bicubic", crop_rounding="round")
OPEN_CLIP_LONGEST_224 = ImagePreprocess(size=224, resize="longest", mode="bicubic", pad_center=True)
OWLVIT_768 = ImagePreprocess(size=768, resize="exact", mode="bicubic")
IMAGENET_V1 = ImagePreprocess(
    size=224, resize="shortest", resize_to=256, mode="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD
)
IMAGENET_V2 = replace(IMAGENET_V1, resize_to=232)
