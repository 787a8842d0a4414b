"""JPEG compressibility and incompressibility rewards (DRaFT paper, Appendix B.3).

The reward is how much a differentiable JPEG round trip changes an image:
``r(x) = -||x - d(c(x))||²`` for compressibility and ``+||x - d(c(x))||²`` for
incompressibility, with ``c``/``d`` kornia's differentiable JPEG codec.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from kornia.enhance import jpeg_codec_differentiable
from torch import nn

from draft_core.rewarding.checks import check_image_batch


def check_quality(quality: float) -> float:
    """``quality`` as a float, or ValueError unless it lies in (0, 100]."""
    # bool is an int subclass; True would silently mean quality 1.
    if isinstance(quality, bool) or not isinstance(quality, (int, float)):
        raise ValueError(f"JPEG quality must be a number in (0, 100], got {quality!r}.")
    if not 0.0 < quality <= 100.0:
        # kornia treats 0 as 1 (libjpeg's convention); refusing it is clearer than remapping.
        raise ValueError(f"JPEG quality must be in (0, 100], got {quality!r}.")
    return float(quality)


def jpeg_reconstruction_error(images: torch.Tensor, quality: float = 50.0) -> torch.Tensor:
    """Per-image mean squared change made by a JPEG encode/decode round trip.

    images: [B, 3, H, W] float in [0, 1]; quality: JPEG quality in (0, 100].
    Returns [B], float32 (float64 for float64 input), differentiable w.r.t. ``images``.

    The paper's ``||x - d(c(x))||²`` is a sum over the 3·H·W values; this is that sum
    divided by 3·H·W, so values compare across resolutions. A constant factor changes
    nothing for Adam, which is invariant to the scale of the loss.
    """
    check_image_batch(images, "jpeg_reconstruction_error")
    quality = check_quality(quality)
    # The codec works on a [0, 255] scale where half precision rounds coarser than a
    # quantisation step; float64 stays float64 so that gradcheck can use it.
    x = images if images.dtype == torch.float64 else images.float()
    # kornia wants a 1-D quality of shape (1,) or (B,); a 0-D tensor raises.
    q = torch.tensor([quality], device=x.device, dtype=x.dtype)
    decoded = jpeg_codec_differentiable(x, q)
    return (x - decoded).square().mean(dim=(1, 2, 3))


class JpegCompressibility(nn.Module):
    """Reward images that JPEG changes little: ``r = -mean((x - d(c(x)))²)``, at most 0.

    quality: JPEG quality in (0, 100]. The paper fixes a 4x compression ratio; a fixed
    quality is the differentiable codec's knob (50 is libjpeg's unscaled table).
    """

    sign = -1.0

    def __init__(self, quality: float = 50.0) -> None:
        super().__init__()
        self.quality = check_quality(quality)

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1]; prompts are ignored. Returns [B]."""
        return self.sign * jpeg_reconstruction_error(images, self.quality)

    def extra_repr(self) -> str:
        return f"quality={self.quality}"


class JpegIncompressibility(JpegCompressibility):
    """Reward images that JPEG changes a lot: ``r = +mean((x - d(c(x)))²)``, at least 0."""

    sign = 1.0
