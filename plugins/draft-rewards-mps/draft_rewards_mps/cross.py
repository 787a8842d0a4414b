"""MPS's condition-aware cross-attention tower (the CoCa-style multimodal layers), in plain torch.

Each of ``depth`` layers is a residual cross-attention from the image tokens (queries) to the
prompt tokens (one shared key/value head, "multi-query", with a parallel SwiGLU feed-forward),
then a residual parallel self-attention + SwiGLU block with rotary position embeddings. Layer
norms have a weight and a fixed zero bias (a buffer). Module names follow the published
checkpoint's (``layers.{i}.0.fn.*`` and ``layers.{i}.1.fn.*``), so its state dict loads as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BiaslessLayerNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.register_buffer("bias", torch.zeros(dim))  # in the checkpoint, always zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        return x + self.fn(x, *args)


def swiglu(x: torch.Tensor) -> torch.Tensor:
    value, gate = x.chunk(2, dim=-1)
    return F.silu(gate) * value


class SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """q [B, H, N, d] (already scaled), one key/value head k, v [B, M, d]; bias [B, 1|H, N, M] added to the logits."""
    logits = q @ k.unsqueeze(1).transpose(-1, -2)
    if bias is not None:
        logits = logits + bias
    out = logits.softmax(dim=-1) @ v.unsqueeze(1)
    return out.transpose(1, 2).flatten(2)  # [B, N, H·d]


class CrossAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.norm = BiaslessLayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.ff = nn.Sequential(
            nn.Linear(dim, 2 * ff_mult * dim, bias=False), SwiGLU(), nn.Linear(ff_mult * dim, dim, bias=False)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] queries, context [B, M, D], mask [B, N, M] added to the logits (0 or −inf)."""
        x = self.norm(x)
        q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2) * self.scale
        k, v = self.to_kv(context).chunk(2, dim=-1)
        return self.to_out(_attend(q, k, v, mask.unsqueeze(1).to(q.dtype))) + self.ff(x)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, n: int) -> torch.Tensor:
        freqs = torch.outer(torch.arange(n, device=self.inv_freq.device, dtype=self.inv_freq.dtype), self.inv_freq)
        return torch.cat((freqs, freqs), dim=-1)


def _rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * angles.cos() + torch.cat((-second, first), dim=-1) * angles.sin()


class ParallelBlock(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.split = (heads * dim_head, dim_head, dim_head, 2 * ff_mult * dim)
        self.norm = BiaslessLayerNorm(dim)
        self.rotary_emb = RotaryEmbedding(dim_head)
        self.fused_attn_ff_proj = nn.Linear(dim, sum(self.split), bias=False)
        self.attn_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.ff_out = nn.Sequential(SwiGLU(), nn.Linear(ff_mult * dim, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        q, k, v, ff = self.fused_attn_ff_proj(x).split(self.split, dim=-1)
        q = q.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        angles = self.rotary_emb(x.shape[1]).to(x.dtype)
        q, k = _rotate(q, angles) * self.scale, _rotate(k, angles)
        return self.attn_out(_attend(q, k, v, None)) + self.ff_out(ff)


class CrossModel(nn.Module):
    """image tokens [B, N, D] attend to prompt tokens [B, M, D] under mask [B, N, M] -> [B, N, D]."""

    def __init__(self, dim: int = 1024, depth: int = 4, dim_head: int = 64, heads: int = 16, ff_mult: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Residual(CrossAttention(dim, dim_head, heads, ff_mult)),
                    Residual(ParallelBlock(dim, dim_head, heads, ff_mult)),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, image: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for cross, block in self.layers:
            image = block(cross(image, text, mask))
        return image
