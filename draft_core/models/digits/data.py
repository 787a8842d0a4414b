"""The ``digits`` model's data: sklearn's bundled ``load_digits`` as 32x32 images with prompts.

1,797 greyscale 8x8 digits (0..16 ink levels, no download) upsampled **bilinearly** to
32x32 (``align_corners=False``): smoother strokes than nearest's 4x4 blocks, and area
averaging back to 8x8 returns nearly the original pixels (the reference SVC relies on
that). Upsampling adds no information; it gives image rewards (JPEG blocks, rotations)
room to act.

Also here: the independent evaluator the benchmark and tests use, an sklearn ``SVC`` on
load_digits' raw 8x8 pixels (sklearn is imported only when these functions run).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 32

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Phrasings seen in training; {word} is the digit's name, {digit} its numeral.
PHRASINGS = [
    "a handwritten digit {word}",
    "the digit {word}",
    "the number {word}",
    "a handwritten {word}",
    "{word}",
    "a handwritten {digit}",
]

# The canonical prompt per digit (phrasing 0), in digit order.
PROMPTS = [f"a handwritten digit {w}" for w in DIGIT_WORDS]

# Share of training prompts replaced by "" so that classifier-free guidance has an
# unconditional model to push away from.
EMPTY_PROMPT_RATE = 0.1

# The digit classifier never trains on every sixth image of load_digits (299 images),
# its held-out check; spread through the file, they come from the same writers as the rest,
# as the diffusion model's samples do.
HOLDOUT_EVERY = 6


def classifier_holdout(n: int) -> torch.Tensor:
    """Boolean mask [n]: True for the images the digit classifier is not trained on."""
    return torch.arange(n) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


def prompt_for(digit: int, phrasing: int = 0) -> str:
    """The prompt for ``digit`` (0..9) in phrasing ``phrasing`` (index into PHRASINGS)."""
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit!r}.")
    if not 0 <= phrasing < len(PHRASINGS):
        raise ValueError(f"phrasing must be in 0..{len(PHRASINGS) - 1}, got {phrasing!r}.")
    return PHRASINGS[phrasing].format(word=DIGIT_WORDS[digit], digit=digit)


def all_prompts() -> list[str]:
    """Every training prompt: 10 digits x len(PHRASINGS), digit-major, then the empty prompt."""
    return [prompt_for(d, p) for d in range(10) for p in range(len(PHRASINGS))] + [""]


def load_raw() -> tuple[torch.Tensor, torch.Tensor]:
    """load_digits as (pixels [N, 8, 8] float32 in 0..16, labels [N] int64), file order."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = torch.from_numpy(data.images).float()
    labels = torch.from_numpy(data.target).long()
    return pixels, labels


def upsample(pixels: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """[N, 8, 8] in 0..16 -> [N, 3, size, size] in [0, 1] (bilinear, identical RGB channels)."""
    x = (pixels / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.expand(-1, 3, -1, -1).contiguous()


def load_images() -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 3, 32, 32] in [-1, 1], labels [N]): the diffusion model's training data."""
    pixels, labels = load_raw()
    return upsample(pixels) * 2 - 1, labels


# -- the independent evaluator ---------------------------------------------------------


def to_sklearn_pixels(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] (H, W multiples of 8) -> [B, 64] in load_digits' 0..16 range.

    Channels are averaged to grey, then each 8x8 cell is the mean of its (H/8)x(W/8) block.
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % 8 or images.shape[-2] % 8:
        raise ValueError(f"images must be [B, 3, H, W] with H, W multiples of 8, got {list(images.shape)}.")
    grey = images.detach().float().mean(dim=1, keepdim=True)
    small = F.adaptive_avg_pool2d(grey, 8)
    return (small.clamp(0, 1) * 16).flatten(1).cpu().numpy()


def fit_reference_svc():
    """An sklearn ``SVC(gamma=0.001)`` fitted on all of load_digits' raw 8x8 pixels.

    It shares nothing with the diffusion model or the shipped CNN but the data, so it
    judges samples independently (about 99% on held-out real digits, a second to fit).
    """
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    data = load_digits()
    return SVC(gamma=0.001).fit(data.data, data.target)
