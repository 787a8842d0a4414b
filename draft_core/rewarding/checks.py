"""Input checks shared by rewards: every reward takes images [B, 3, H, W] float in [0, 1]."""

from __future__ import annotations

import torch

#: how far outside [0, 1] pixel values may stray (finite-difference steps, rounding) before it is an error.
RANGE_TOLERANCE = 1e-3


def check_image_batch(images: torch.Tensor, name: str) -> None:
    """Raise ValueError (naming the reward ``name``) unless ``images`` is a floating [B, 3, H, W]
    tensor with values in [0, 1] (within ``RANGE_TOLERANCE``)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name}: images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: images must have shape [B, 3, H, W] (RGB in [0, 1]), got {list(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(f"{name}: images must be a floating-point tensor in [0, 1], got dtype {images.dtype}.")
    if images.numel():
        low, high = (v.item() for v in torch.aminmax(images.detach()))
        if not (low >= -RANGE_TOLERANCE and high <= 1 + RANGE_TOLERANCE):  # also catches NaN
            hint = " (images in [-1, 1]? map them with (x + 1) / 2)" if low < 0 else ""
            hint = hint or (" (images in [0, 255]? divide by 255)" if high > 1.5 else "")
            raise ValueError(f"{name}: image values must lie in [0, 1], got min {low:.4g} and max {high:.4g}{hint}.")
