"""Rotational anti-correlation reward (DRaFT paper, Appendix B.9).

Rewards images that differ from their own rotations by 90, 180 and 270 degrees:
``r(x) = 1/3 Σ_{k=1..3} ||x - rot90(x, k)||²``, which pushes samples away from
rotational symmetry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from draft_core.rewarding.checks import check_image_batch


def rotation_anticorrelation(images: torch.Tensor) -> torch.Tensor:
    """Mean over k = 1, 2, 3 of the per-image mean of ``(x - rot90(x, k))²``.

    images: [B, 3, S, S] float in [0, 1] (square: a rotation by 90 degrees must keep
    the shape). Returns [B] in [0, 1], float32 (float64 for float64 input).

    The paper's ``||·||²`` sums over the 3·S·S values; this divides by 3·S·S so values
    compare across resolutions (Adam is invariant to the constant).
    """
    check_image_batch(images, "rotation_anticorrelation")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(
            f"rotation_anticorrelation: images must be square (H == W) to be compared with their "
            f"90-degree rotations, got H={images.shape[-2]}, W={images.shape[-1]}."
        )
    # Squared differences of values near 0 lose most of bf16's 8-bit significand.
    x = images if images.dtype == torch.float64 else images.float()
    per_k = [(x - torch.rot90(x, k, dims=(-2, -1))).square().mean(dim=(1, 2, 3)) for k in (1, 2, 3)]
    return torch.stack(per_k).mean(dim=0)


class RotationAnticorrelation(nn.Module):
    """Reward ``r = 1/3 Σ_k mean((x - rot90(x, k))²)``, 0 for a rotation-symmetric image."""

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, S, S] in [0, 1]; prompts are ignored. Returns [B]."""
        return rotation_anticorrelation(images)
