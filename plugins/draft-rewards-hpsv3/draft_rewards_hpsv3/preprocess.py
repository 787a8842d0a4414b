"""HPSv3's image preprocessing in torch ops, so gradients reach the pixels.

HPSv3 resizes every image with qwen-vl-utils (bicubic, PIL) to a grid of exactly ``PIXELS``
pixels, both sides multiples of 28 and the aspect ratio kept as far as that allows (448 x 448 for
a square image), then gives it to Qwen2VLImageProcessor: rescale to [0, 1], normalise with CLIP's
mean and std, and cut into 14 x 14 patches, each repeated over the two temporal frames of a
still image and ordered so that every 2 x 2 block of patches (which the vision tower merges into
one token) is contiguous. The processor's own resize leaves such an image as it is (its pixel
range, 56² to 28²·1280, contains ``PIXELS``). The only difference from the official processing is
PIL's rounding to uint8 after the resize (tested against the processor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from draft_core.rewarding.preprocess import CLIP_MEAN, CLIP_STD, normalize, resize

#: HPSv3's min_pixels = max_pixels (its data collator's and inference's setting).
PIXELS = 256 * 28 * 28


def target_size(height: int, width: int, factor: int, pixels: int = PIXELS) -> tuple[int, int]:
    """qwen-vl-utils' ``smart_resize`` with min_pixels = max_pixels = ``pixels``: (height, width)."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > pixels:
        beta = math.sqrt(height * width / pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < pixels:
        beta = math.sqrt(pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


@dataclass(frozen=True)
class VisionInput:
    """Qwen2VLImageProcessor's settings (Qwen2-VL-7B-Instruct's preprocessor_config.json by default)."""

    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2

    @classmethod
    def from_processor(cls, image_processor) -> VisionInput:
        return cls(
            mean=tuple(float(v) for v in image_processor.image_mean),
            std=tuple(float(v) for v in image_processor.image_std),
            patch_size=int(image_processor.patch_size),
            temporal_patch_size=int(image_processor.temporal_patch_size),
            merge_size=int(image_processor.merge_size),
        )

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] in [0, 1] -> (pixel_values [B·gh·gw, 3·t·p·p], grid_thw [B, 3]), differentiably."""
        p, t, m = self.patch_size, self.temporal_patch_size, self.merge_size
        height, width = target_size(*images.shape[-2:], factor=p * m)
        # two passes clipped in between, then clipped: PIL's bicubic stores each pass as uint8
        x = resize(images, (height, width), "bicubic", antialias=True, two_pass=True).clamp(0, 1)
        x = normalize(x, self.mean, self.std)
        b, c = x.shape[:2]
        gh, gw = height // p, width // p
        x = x.reshape(b, c, gh // m, m, p, gw // m, m, p)
        # [B, gh/m, gw/m, m, m, C, p, p]: merge blocks contiguous, as the processor orders them
        x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)
        # a still image is its own second frame: each patch repeated over the temporal axis, after C
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1)
        pixel_values = x.reshape(b * gh * gw, c * t * p * p)
        # the grid's values size the vision tower's sequences: on the CPU for meta images (draft plan)
        grid = torch.tensor([[1, gh, gw]], device="cpu" if images.is_meta else images.device).expand(b, -1)
        return pixel_values, grid
