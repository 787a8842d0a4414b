"""Small tensor rules every model family shares: the float32 carry of half-precision outputs,
classifier-free guidance in diffusers' convention, where a module's device and dtype are read
(its first parameter, without diffusers' module walks), and prompt tokenising as diffusers'
pipelines do it."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32: half-precision model outputs are carried in float32; float64 stays."""
    return x if x.dtype == torch.float64 else x.float()


def guided(out_u: torch.Tensor, out_c: torch.Tensor, scale) -> torch.Tensor:
    """Classifier-free guidance in diffusers' convention: out(∅) + g·(out(c) − out(∅))."""
    if torch.is_tensor(scale):
        scale = scale.to(out_u.dtype)
    return out_u + scale * (out_c - out_u)


def first_tensor(module: torch.nn.Module) -> torch.Tensor:
    """The module's first parameter (or buffer): where its device is read."""
    for tensor in module.parameters():
        return tensor
    for tensor in module.buffers():
        return tensor
    raise ValueError(f"{type(module).__name__} has no parameters or buffers, so it has no device.")


def parameter_dtype(module: torch.nn.Module) -> torch.dtype:
    """The first floating parameter's dtype, skipping modules kept in float32 (diffusers' rule)."""
    keep = getattr(module, "_keep_in_fp32_modules", None) or ()
    last = None
    for name, param in module.named_parameters():
        last = param.dtype
        if keep and any(k in name for k in keep):
            continue
        if param.is_floating_point():
            return param.dtype
    return last if last is not None else first_tensor(module).dtype


def token_ids(tokenizer, prompts: Sequence[str], max_length: int | None = None, device=None) -> torch.Tensor:
    """[B, L] token ids of ``prompts`` as diffusers' pipelines tokenize them: padded to ``max_length`` (the
    tokenizer's ``model_max_length`` by default) and truncated, special tokens added; on ``device``."""
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids if device is None else ids.to(device)


def uses_cfg(scale) -> bool:
    """One rule for constants and learned schedules: a tensor scale or any g != 1 runs two passes."""
    return torch.is_tensor(scale) or scale != 1.0
