"""Learned sampler hyperparameters (paper Appendix B.12): a guidance schedule and a negative prompt.

Both are trained jointly with the LoRA by the same reward gradient, and saved beside it
(``lora/sampler_params.safetensors``), where ``draft sample`` finds and uses them.

- ``GuidanceSchedule``: one guidance weight per sampling step, in diffusers' convention
  (ε̃ = ε(∅) + g(t)·(ε(c) − ε(∅)); the paper's w(t) = g(t) − 1), initialised to the
  config's constant. Applied to a sampler with another number of steps by linear
  interpolation over the steps (exact at the knots). Trained with its own learning-rate
  multiplier (default 50x: the weights are large) and no weight decay.
- ``NegativePrompt``: a prompt-dependent embedding for the unconditional branch of
  classifier-free guidance, MLP(MultiHeadSelfAttention(e)) of the prompt's text
  embeddings e. It is added to the empty prompt's embedding, and the MLP's last layer
  starts at zero, so training starts from plain CFG exactly.

Config: ``learn: {guidance: true, guidance_lr_mult: 50, negative_prompt: true}``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from draft_core.errors import ConfigError
from draft_core.models.conditioning import Conditioning
from draft_core.plugins.bases import as_estimator

FILENAME = "sampler_params.safetensors"


class GuidanceSchedule(nn.Module):
    """weights: [K] guidance scales for a K-step sampler (fp32)."""

    def __init__(self, knots: int, init: float) -> None:
        super().__init__()
        if knots < 1:
            raise ConfigError(f"a guidance schedule needs at least one step, got {knots}.")
        self.weights = nn.Parameter(torch.full((knots,), float(init)))

    @property
    def knots(self) -> int:
        return self.weights.shape[0]

    def at(self, step: int, num_steps: int) -> torch.Tensor:
        """The weight for step ``step`` of a ``num_steps``-step sampler (0-dim tensor).

        Steps map linearly onto the knots (first to first, last to last); between knots the
        weight is interpolated linearly.
        """
        k = self.knots
        if num_steps == k:
            return self.weights[step]
        pos = step * (k - 1) / max(num_steps - 1, 1)
        lo = min(int(pos), k - 1)
        frac = pos - lo
        if frac == 0.0:
            return self.weights[lo]
        return self.weights[lo] * (1.0 - frac) + self.weights[lo + 1] * frac

    def resampled(self, num_steps: int) -> torch.Tensor:
        """The whole schedule at ``num_steps`` steps, detached ([num_steps])."""
        with torch.no_grad():
            return torch.stack([self.at(i, num_steps) for i in range(num_steps)])


class NegativePrompt(nn.Module):
    """uncond'(e) = uncond + MLP(MHSA(LayerNorm(e))), zero at initialisation. e: [B, L, D]."""

    def __init__(self, dim: int, heads: int = 4, hidden: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"learn.negative_prompt_heads={heads} must divide the text width {dim}.")
        self.dim, self.heads, self.hidden = dim, heads, hidden or 2 * dim
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, self.hidden), nn.GELU(), nn.Linear(self.hidden, dim))
        out = self.mlp[2]
        assert isinstance(out, nn.Linear)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)

    def forward(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        dtype = self.norm.weight.dtype  # fp32 parameters, whatever the text encoder's dtype
        e = self.norm(cond.to(dtype))
        attended, _ = self.attn(e, e, e, need_weights=False)
        delta = self.mlp(attended)
        out: torch.Tensor = (uncond.to(dtype) + delta).to(cond.dtype)
        return out


class LearnedSampling(nn.Module):
    """The learned parts, either or both; attaches to a sampler and rewrites conditionings."""

    def __init__(self, guidance: GuidanceSchedule | None = None, negative: NegativePrompt | None = None) -> None:
        super().__init__()
        self.guidance = guidance
        self.negative = negative

    @classmethod
    def from_config(cls, section: Any, model: Any, sampler: Any) -> LearnedSampling | None:
        """None when the config learns nothing; otherwise fresh parameters on the model's device."""
        if not (section.guidance or section.negative_prompt):
            return None
        guidance = GuidanceSchedule(sampler.num_steps, sampler.guidance_scale) if section.guidance else None
        negative = None
        if section.negative_prompt:
            width = model.encode_prompts([""]).cond.shape[-1]  # the width of the embedding it replaces
            negative = NegativePrompt(width, section.negative_prompt_heads)
        return cls(guidance, negative).to(model.device)

    def param_groups(self, lr: float, section: Any) -> list[dict[str, Any]]:
        """AdamW groups with their learning-rate multipliers and no weight decay."""
        groups = []
        if self.guidance is not None:
            groups.append(
                {"params": list(self.guidance.parameters()), "lr": lr * section.guidance_lr_mult, "weight_decay": 0.0}
            )
        if self.negative is not None:
            groups.append(
                {
                    "params": list(self.negative.parameters()),
                    "lr": lr * section.negative_prompt_lr_mult,
                    "weight_decay": 0.0,
                }
            )
        return groups

    def attach(self, sampler: Any) -> None:
        """Make ``sampler`` take its guidance from the schedule (no-op without one)."""
        if self.guidance is not None:
            sampler.guidance_schedule = self.guidance

    def condition(self, cond: Conditioning) -> Conditioning:
        """The conditioning with the learned negative prompt in place of the empty one."""
        if self.negative is None:
            return cond
        # Only the sequence embedding is learned; a family's pooled empty-prompt embedding stays as it is.
        return dataclasses.replace(cond, uncond=self.negative(cond.cond, cond.uncond))

    # -- files ---------------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"guidance_knots": self.guidance.knots if self.guidance is not None else 0}
        if self.negative is not None:
            meta.update(
                negative_dim=self.negative.dim, negative_heads=self.negative.heads, negative_hidden=self.negative.hidden
            )
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        path = folder / FILENAME
        tmp = folder / f".{FILENAME}.tmp"
        save_file(tensors, tmp, metadata={"draft": json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, folder: Path, device: Any = None) -> LearnedSampling | None:
        """The learned parameters saved in a LoRA folder, or None when there are none."""
        path = Path(folder) / FILENAME
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("draft", "{}"))
        tensors = load_file(str(path))
        guidance = GuidanceSchedule(meta["guidance_knots"], 0.0) if meta.get("guidance_knots") else None
        negative = None
        if "negative_dim" in meta:
            negative = NegativePrompt(meta["negative_dim"], meta["negative_heads"], meta["negative_hidden"])
        learned = cls(guidance, negative)
        learned.load_state_dict(tensors)
        learned.requires_grad_(False)
        return learned.to(device) if device is not None else learned


def _spans(steps: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    spans: list[list[int]] = []
    for i in steps:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def guidance_learning_warning(estimator: Any, sampler: Any, estimator_name: str) -> str | None:
    """Why a learned guidance schedule would learn only some of its knots, or None.

    The schedule has one knot per sampling step, and a knot learns only from the steps
    the estimator differentiates (``differentiated_steps``; an estimator without it is
    not judged). Appendix B.12 trains the schedule with full backpropagation.
    """
    T = sampler.num_steps
    steps = as_estimator(estimator).differentiated_steps(T)
    if steps is None:
        return None
    learning = sorted(i for i in steps if 0 <= i < T)
    if len(learning) == T:
        return None
    frozen = sorted(set(range(T)) - set(learning))
    return (
        f"learn.guidance trains one guidance weight per sampling step, but estimator '{estimator_name}' "
        f"({estimator!r}) differentiates only sampling steps {_spans(learning) or 'none'} of 0-{T - 1} "
        f"(0 = pure noise), so only those knots of the schedule will learn; knots {_spans(frozen)} stay at "
        f"sampler.guidance_scale={sampler.guidance_scale:g}. The paper (Appendix B.12) learns the schedule "
        f"with full backpropagation: estimator 'draft' trains every knot."
    )


def plot_guidance(schedule: GuidanceSchedule, path: Path, title: str = "") -> Path:
    """The learned schedule against the sampling step (the paper's Figure 33)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = schedule.weights.detach().float().cpu()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(range(len(w)), w.numpy(), marker="o", markersize=3)
    ax.set_xlabel("sampling step (0 = pure noise)")
    ax.set_ylabel("guidance scale g (w = g - 1)")
    ax.set_title(title or "learned guidance schedule")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
