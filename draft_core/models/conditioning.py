"""Encoded prompts, as a model family hands them to its denoiser (with the empty prompt for guidance)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

#: The tensor fields of a Conditioning, in order (what a trajectory buffer stores).
TENSOR_FIELDS = ("cond", "uncond", "pooled", "uncond_pooled")
#: How ``tensors()`` names an ``extra`` tensor (``extra.mask``), so a buffer can hold it beside the others.
EXTRA_PREFIX = "extra."


def conditioning_keys(tensors: dict[str, Any]) -> list[str]:
    """The keys of a dict (a buffer, a checkpoint) that ``Conditioning.tensors()`` wrote."""
    return [k for k in tensors if k in TENSOR_FIELDS or k.startswith(EXTRA_PREFIX)]


def _shared(name: str) -> bool:
    """Whether a tensor belongs to the empty (or negative) prompt, which may be one row for the batch."""
    return name.startswith("uncond")


@dataclass
class Conditioning:
    """Encoded prompts for classifier-free guidance, in whatever form the model family's denoiser takes.

    cond: [B, L, D] prompt embeddings (the sequence the denoiser attends to); uncond: [B, L, D] or
    [1, L, D] embeddings of the empty (or negative) prompt, broadcast over the batch, or None for a
    guidance-distilled model that never runs an unconditional pass (FLUX.1-dev); pooled: [B, P]
    pooled text embeddings (SDXL, SD3, FLUX) or None; uncond_pooled: [B or 1, P] for the empty prompt,
    or None; prompts: the B prompt strings.

    extra: any further tensors the family's denoiser takes, by name: ``mask`` [B, L] (a text attention
    mask, as T5-conditioned families such as PixArt pass it) with ``uncond_mask`` [B or 1, L] for the
    empty prompt. A name that starts with ``uncond`` is the empty prompt's (one row is shared by the
    batch, as for ``uncond``); the others have one row per prompt. ``repeat``, ``select``, ``detach``,
    ``to`` and a learned negative prompt carry them, ``guidance_pairs`` pairs them for the two passes
    of classifier-free guidance, and ``tensors``/``from_tensors`` store them. A subclass with tensor fields
    of its own is carried the same way (each method returns the subclass). Extra conditioning computed from
    shapes alone (SDXL's size ids, FLUX's position ids) is the family's business and is not stored here.
    """

    cond: torch.Tensor
    uncond: torch.Tensor | None
    prompts: list[str]
    pooled: torch.Tensor | None = None
    uncond_pooled: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.cond.shape[0])

    def _map(
        self, per_batch: Callable[[torch.Tensor], torch.Tensor], shared: Callable[[torch.Tensor], torch.Tensor]
    ) -> dict[str, Any]:
        """The fields with ``per_batch`` applied to [B, ...] tensors and ``shared`` to the [1, ...] empty-prompt
        ones (``extra`` too); other values (prompts, a subclass's non-tensor fields) as they are."""

        def one(name: str, value: torch.Tensor) -> torch.Tensor:
            if _shared(name) and value.shape[0] == 1 and self.cond.shape[0] != 1:
                return shared(value)
            return per_batch(value)

        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                out[f.name] = {k: one(k, v) for k, v in value.items()}
            else:
                out[f.name] = one(f.name, value) if isinstance(value, torch.Tensor) else value
        return out

    def repeat(self, n: int) -> Conditioning:
        """The same conditioning for a batch repeated n times ([n*B, ...], copies contiguous)."""
        out = self._map(lambda v: v.repeat(n, *([1] * (v.dim() - 1))), lambda v: v)
        out["prompts"] = list(self.prompts) * n
        return dataclasses.replace(self, **out)

    def select(self, index: torch.Tensor) -> Conditioning:
        """The rows ``index`` [b] of the batch (the empty prompt's shared rows stay shared)."""
        out = self._map(lambda v: v[index.to(v.device)], lambda v: v)
        out["prompts"] = [self.prompts[i] for i in index.tolist()] if self.prompts else []
        return dataclasses.replace(self, **out)

    def detach(self) -> Conditioning:
        return dataclasses.replace(self, **self._map(lambda v: v.detach(), lambda v: v.detach()))

    def to(self, device: torch.device | str) -> Conditioning:
        return dataclasses.replace(self, **self._map(lambda v: v.to(device), lambda v: v.to(device)))

    def guidance_pairs(self) -> dict[str, torch.Tensor]:
        """For one batched denoiser call of classifier-free guidance: each conditional tensor that has an
        empty-prompt counterpart (``cond``/``uncond``, ``pooled``/``uncond_pooled``, ``extra[k]``/
        ``extra["uncond_" + k]``), as ``[2B, ...]``: the empty prompt's rows (a shared row repeated) first."""
        b = self.batch_size
        pairs = [("cond", self.cond, self.uncond), ("pooled", self.pooled, self.uncond_pooled)]
        pairs += [(k, v, self.extra.get(f"uncond_{k}")) for k, v in self.extra.items() if not _shared(k)]
        out = {}
        for name, c, u in pairs:
            if c is not None and u is not None:
                out[name] = torch.cat([u.expand(b, *u.shape[1:]) if u.shape[0] == 1 else u, c])
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensor fields that are set, by name (for a buffer or a checkpoint); ``extra`` as ``extra.<name>``."""
        out = {name: getattr(self, name) for name in TENSOR_FIELDS if getattr(self, name) is not None}
        out.update({f"{EXTRA_PREFIX}{k}": v for k, v in self.extra.items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prompts: list[str] | None = None) -> Conditioning:
        """Inverse of ``tensors`` (prompts default to empty strings)."""
        unknown = set(tensors) - set(conditioning_keys(tensors))
        if unknown:
            raise KeyError(
                f"unknown conditioning tensors {sorted(unknown)}; expected some of {TENSOR_FIELDS} "
                f"or {EXTRA_PREFIX}<name>"
            )
        cond = tensors["cond"]
        extra = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
        return cls(
            cond=cond,
            uncond=tensors.get("uncond"),
            prompts=list(prompts) if prompts else [""] * cond.shape[0],
            pooled=tensors.get("pooled"),
            uncond_pooled=tensors.get("uncond_pooled"),
            extra=extra,
        )
