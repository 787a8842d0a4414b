"""Encoded prompts, as a model family hands them to its denoiser (with the empty prompt for guidance)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

#: The tensor fields of a Conditioning, in order (what a trajectory buffer stores).
TENSOR_FIELDS = ("cond", "uncond", "pooled", "uncond_pooled")


@dataclass
class Conditioning:
    """Encoded prompts for classifier-free guidance, in whatever form the model family's denoiser takes.

    cond: [B, L, D] prompt embeddings (the sequence the denoiser attends to); uncond: [B, L, D] or
    [1, L, D] embeddings of the empty (or negative) prompt, broadcast over the batch, or None for a
    guidance-distilled model that never runs an unconditional pass (FLUX.1-dev); pooled: [B, P]
    pooled text embeddings (SDXL, SD3, FLUX) or None; uncond_pooled: [B or 1, P] for the empty prompt,
    or None; prompts: the B prompt strings. Extra conditioning computed from shapes alone (SDXL's size
    ids, FLUX's position ids) is the family's business and is not stored here.
    """

    cond: torch.Tensor
    uncond: torch.Tensor | None
    prompts: list[str]
    pooled: torch.Tensor | None = None
    uncond_pooled: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.cond.shape[0]

    def _map(self, per_batch: Callable[[torch.Tensor], torch.Tensor], shared: Callable[[torch.Tensor], torch.Tensor]):
        """A copy with ``per_batch`` applied to [B, ...] tensors and ``shared`` to the [1, ...] empty-prompt ones."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "prompts" or value is None:
                out[f.name] = value
            elif f.name.startswith("uncond") and value.shape[0] == 1 and self.cond.shape[0] != 1:
                out[f.name] = shared(value)
            else:
                out[f.name] = per_batch(value)
        return out

    def repeat(self, n: int) -> "Conditioning":
        """The same conditioning for a batch repeated n times ([n*B, ...], copies contiguous)."""
        out = self._map(lambda v: v.repeat(n, *([1] * (v.dim() - 1))), lambda v: v)
        out["prompts"] = list(self.prompts) * n
        return Conditioning(**out)

    def select(self, index: torch.Tensor) -> "Conditioning":
        """The rows ``index`` [b] of the batch (the empty prompt's shared rows stay shared)."""
        out = self._map(lambda v: v[index.to(v.device)], lambda v: v)
        out["prompts"] = [self.prompts[i] for i in index.tolist()] if self.prompts else []
        return Conditioning(**out)

    def detach(self) -> "Conditioning":
        out = self._map(lambda v: v.detach(), lambda v: v.detach())
        return Conditioning(**out)

    def to(self, device) -> "Conditioning":
        out = self._map(lambda v: v.to(device), lambda v: v.to(device))
        return Conditioning(**out)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensor fields that are set, by name (for a buffer or a checkpoint)."""
        return {name: getattr(self, name) for name in TENSOR_FIELDS if getattr(self, name) is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prompts: list[str] | None = None) -> "Conditioning":
        """Inverse of ``tensors`` (prompts default to empty strings)."""
        unknown = set(tensors) - set(TENSOR_FIELDS)
        if unknown:
            raise KeyError(f"unknown conditioning tensors {sorted(unknown)}; expected some of {TENSOR_FIELDS}")
        cond = tensors["cond"]
        return cls(cond=cond, uncond=tensors.get("uncond"), prompts=list(prompts) if prompts else [""] * cond.shape[0],
                   pooled=tensors.get("pooled"), uncond_pooled=tensors.get("uncond_pooled"))
