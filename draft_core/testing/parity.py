"""Test helpers for preprocessing parity: a reward's torch preprocessing against its model's
official (PIL or torchvision) processor, on scikit-image's bundled photographs (no download).

    for name, array, images in photos():          # uint8 [H, W, 3] and [1, 3, H, W] float64
        worst, mean = grey_levels(ours(images), official(array), std)

Differences are reported in grey levels of the un-normalised image (1 = 1/255), the unit
in which PIL rounds, so a bound reads the same for every normalisation. Needs scikit-image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

#: colour photographs of varied sizes and content bundled with scikit-image.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photos(names: Sequence[str] = PHOTOS) -> Iterator[tuple[str, np.ndarray, torch.Tensor]]:
    """(name, uint8 [H, W, 3] array, [1, 3, H, W] float64 tensor in [0, 1]) per photo."""
    import skimage.data

    for name in names:
        array = getattr(skimage.data, name)()
        yield name, array, torch.from_numpy(array).permute(2, 0, 1)[None].double() / 255


def grey_levels(ours: torch.Tensor, reference: torch.Tensor, std: Sequence[float]) -> tuple[float, float]:
    """(max, mean) absolute difference of two normalised [B, 3, H, W] batches, in grey levels."""
    if ours.shape != reference.shape:
        raise AssertionError(f"shapes differ: ours {list(ours.shape)}, reference {list(reference.shape)}")
    scale = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1) * 255
    diff = (ours.double().cpu() - reference.double().cpu()).abs() * scale
    return float(diff.max()), float(diff.mean())
