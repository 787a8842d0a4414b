"""Input checks shared by rewards: every reward takes images [B, 3, H, W] float in [0, 1]."""

from __future__ import annotations

import torch


def check_image_batch(images: torch.Tensor, name: str) -> None:
    """Raise ValueError (naming the reward ``name``) unless ``images`` is a floating [B, 3, H, W] tensor."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name}: images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{name}: images must have shape [B, 3, H, W] (RGB in [0, 1]), got {list(images.shape)}."
        )
    if not images.is_floating_point():
        raise ValueError(f"{name}: images must be a floating-point tensor in [0, 1], got dtype {images.dtype}.")
