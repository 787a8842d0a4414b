"""Encoded prompts, as a model hands them to its denoiser (with the empty prompt for guidance)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Conditioning:
    """Encoded prompts for classifier-free guidance.

    cond: [B, L, D] prompt embeddings; uncond: [B, L, D] or [1, L, D] embeddings of
    the empty prompt (broadcast over the batch); prompts: the B prompt strings.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    prompts: list[str]

    def repeat(self, n: int) -> "Conditioning":
        """The same conditioning for a batch repeated n times ([n*B, ...], copies contiguous)."""
        uncond = self.uncond if self.uncond.shape[0] == 1 else self.uncond.repeat(n, 1, 1)
        return Conditioning(self.cond.repeat(n, 1, 1), uncond, list(self.prompts) * n)
