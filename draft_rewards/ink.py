"""Ink-coverage reward: the soft share of pixels that are ink, so that strokes grow bolder.

``r(x) = mean_pixels σ(s · (g(x) − threshold) / softness)``, where ``g`` is the grey level
(channel mean) and ``s = +1`` for light ink on a dark ground (the ``digits`` model's white
strokes on black) or ``−1`` for dark ink on light paper. A pixel counts fully once it is
clearly past the threshold, so the gradient sits on the pixels near it, the edges of the
strokes: pushing them over widens every stroke, while the flat ground (far from the
threshold) gets almost none. Over-optimised it fills the whole image with ink, which is
why the quickstart pairs it with a KL penalty and few steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from draft_core.rewarding.checks import check_image_batch

INKS = ("light", "dark")


def ink_coverage(
    images: torch.Tensor, threshold: float = 0.5, softness: float = 0.1, ink: str = "light"
) -> torch.Tensor:
    """images: [B, C, H, W] in [0, 1] -> [B] soft share of ink pixels, in (0, 1).

    float32 (float64 for float64 input) whatever the input precision.
    """
    check_image_batch(images, "ink_coverage")
    x = images if images.dtype == torch.float64 else images.float()
    sign = 1.0 if ink == "light" else -1.0
    grey = x.mean(dim=1)
    return torch.sigmoid(sign * (grey - threshold) / softness).mean(dim=(1, 2))


class InkCoverage(nn.Module):
    """Reward ``r = mean σ(±(grey − threshold) / softness)``: bolder strokes score higher.

    threshold: the grey level (0..1) between ground and ink. softness: how far from the
    threshold a pixel still gets gradient (grey levels; smaller is a harder count).
    ink: "light" (light strokes on dark, as the ``digits`` model draws) or "dark".
    Prompts are ignored.
    """

    def __init__(self, threshold: float = 0.5, softness: float = 0.1, ink: str = "light") -> None:
        super().__init__()
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
            raise ValueError(
                f"InkCoverage: threshold must be a grey level strictly between 0 and 1, got {threshold!r}."
            )
        if isinstance(softness, bool) or not isinstance(softness, (int, float)) or not softness > 0:
            raise ValueError(
                f"InkCoverage: softness must be a positive number (grey levels, e.g. 0.1), got {softness!r}."
            )
        if ink not in INKS:
            raise ValueError(f"InkCoverage: ink must be one of {list(INKS)}, got {ink!r}.")
        self.threshold, self.softness, self.ink = float(threshold), float(softness), ink

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, C, H, W] in [0, 1]. Returns [B]."""
        return ink_coverage(images, self.threshold, self.softness, self.ink)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, softness={self.softness}, ink={self.ink!r}"
