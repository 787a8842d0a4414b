"""The size of a real JPEG file: DDPO's compressibility reward, which has no gradient.

Each image is quantised to 8 bits and encoded by PIL (libjpeg) at ``quality`` (DDPO's
95); the reward is the file's size in kilobytes (1 kB = 1000 bytes), exactly DDPO's:

* ``jpeg-size``: −kB, higher for images that compress well (DDPO's "compressibility");
* ``jpeg-size-inverse``: +kB, higher for images that do not ("incompressibility").

The encoder is a black box: these rewards declare ``differentiable = False``, so only
estimators that need reward values alone (ddpo, grpo) train on them. The differentiable
stand-in is ``jpeg-compressibility`` (kornia's codec, the DRaFT paper's B.3 reward);
``jpeg-size`` is the natural judge of what it achieves.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from PIL import Image

from draft_core.rewarding.checks import check_image_batch


def jpeg_sizes(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """Bytes of each image's JPEG file: images [B, 3, H, W] in [0, 1] -> [B] float64 (CPU).

    Pixels are rounded to 8 bits as DDPO does: round(255·x), clamped to [0, 255].
    """
    check_image_batch(images, "jpeg-size")
    pixels = (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell())
    return torch.tensor(sizes, dtype=torch.float64)


class JpegSize:
    """r = −(JPEG file size in kB) at ``quality`` (an integer 1..100; PIL's default scale)."""

    differentiable = False
    sign = -1.0

    def __init__(self, quality: int = 95) -> None:
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"jpeg-size quality must be an integer in 1..100 (PIL's JPEG quality), got {quality!r}.")
        self.quality = quality

    def __repr__(self) -> str:
        return f"{type(self).__name__}(quality={self.quality})"

    def __call__(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1]; prompts are ignored. Returns [B] float32 on the images' device, no graph."""
        kb = jpeg_sizes(images, self.quality) / 1000.0
        return (self.sign * kb).to(device=images.device, dtype=torch.float32)


class JpegSizeInverse(JpegSize):
    """r = +(JPEG file size in kB): DDPO's incompressibility."""

    sign = 1.0
