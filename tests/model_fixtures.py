"""Small models and rewards shared by the core's tests."""

from __future__ import annotations

from dataclasses import replace

import torch

from draft_core.lora import add_lora
from draft_core.models.tiny import SD14_SCHEDULER_CONFIG, build_tiny_random
from draft_core.plugins.protocols import StepInputs


def tiny_with_lora(dtype=torch.float32, scheduler_overrides: dict | None = None, rank: int = 2, seed: int = 0):
    """tiny-random with a LoRA whose both factors are random (so every LoRA weight gets gradient)."""
    config = {**SD14_SCHEDULER_CONFIG, **(scheduler_overrides or {})}
    model = build_tiny_random(seed=seed, scheduler_config=config).to(dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        params = add_lora(model.unet, rank=rank, init=False)
    for p in params:
        p.data = p.data.to(dtype)
    return model, params


class LinearReward:
    """A smooth reward: <images, W> per image, with a fixed random W."""

    def __init__(self, shape, dtype=torch.float32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(shape, generator=g, dtype=dtype)

    def __call__(self, images, prompts):
        return (images * self.weight.to(images)).flatten(1).sum(1)


class PooledLinearReward(torch.nn.Module):
    """A small network reward: a Linear layer on 8x8 average-pooled pixels, then tanh."""

    def __init__(self, dtype=torch.float64, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = torch.nn.Linear(3 * 8 * 8, 1).to(dtype)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g, dtype=dtype) * 0.3)
            self.fc.bias.zero_()
        self.requires_grad_(False)

    def forward(self, images, prompts=()):
        x = torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)
        return torch.tanh(self.fc(x.to(self.fc.weight.dtype))).squeeze(1)


def guided_eps(model, x, t, cond, scale):
    """Classifier-free guidance written out: ε(∅) + g (ε(c) − ε(∅))."""
    eps_u = model.unet(x, t, encoder_hidden_states=cond.uncond.expand(x.shape[0], -1, -1)).sample
    eps_c = model.unet(x, t, encoder_hidden_states=cond.cond).sample
    return eps_u + scale * (eps_c - eps_u)


def step_inputs(model, sampler, reward, prompts, seed: int = 0) -> StepInputs:
    cond = model.encode_prompts(prompts)
    noise = model.make_noise(len(prompts), torch.Generator().manual_seed(seed), dtype=model.dtype)
    return StepInputs(model, sampler, reward, cond, noise, torch.Generator().manual_seed(seed + 100))


def grads_of(estimator, inputs, params, split: bool = False):
    """The estimator's gradient; split: let it run its own backward passes (as the runner does)."""
    for p in params:
        p.grad = None
    out = estimator(replace(inputs, backward=(lambda loss: loss.backward()) if split else None))
    if not out.backward_done:
        out.loss.backward()
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params], out


def assert_central_differences(
    loss_at, grads, params, directions: int = 3, h: float = 1e-5, rel: float = 1e-6, seed: int = 0
) -> None:
    """Float64: along random directions d in parameter space, the analytic directional
    derivative Σ⟨grad, d⟩ equals (L(θ + h·d) − L(θ − h·d)) / 2h. ``loss_at()`` evaluates L
    at the current parameters (resetting any random stream it draws from)."""
    import pytest

    g = torch.Generator().manual_seed(seed)
    saved = [p.detach().clone() for p in params]
    for _ in range(directions):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, s, d in zip(params, saved, direction):
                    p.copy_(s + sign * h * d)
                values.append(float(loss_at()))
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        fd = (values[0] - values[1]) / (2 * h)
        analytic = sum((grad * d).sum() for grad, d in zip(grads, direction)).item()
        assert abs(analytic) > 1e-6, "the directional derivative is (almost) zero: nothing is tested"
        assert fd == pytest.approx(analytic, rel=rel)


def patch_flux_rope_float64(monkeypatch) -> None:
    """diffusers' apply_rotary_emb computes in float32 (``x.float()``), even for float64 queries and keys,
    which would round a float64 model's attention to float32. For the finite-difference test, the same
    rotation (FLUX's interleaved pairs) in the input's own dtype."""
    import diffusers.models.transformers.transformer_flux as transformer_flux

    original = transformer_flux.apply_rotary_emb

    def rotate(x, freqs_cis, use_real=True, use_real_unbind_dim=-1, sequence_dim=2):
        if x.dtype != torch.float64:
            return original(
                x, freqs_cis, use_real=use_real, use_real_unbind_dim=use_real_unbind_dim, sequence_dim=sequence_dim
            )
        assert use_real and use_real_unbind_dim == -1 and sequence_dim == 1  # what FluxAttnProcessor passes
        cos, sin = (f[None, :, None, :].to(x) for f in freqs_cis)
        real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
        return x * cos + torch.stack([-imag, real], dim=-1).flatten(3) * sin

    x = torch.randn(1, 5, 2, 8, dtype=torch.float64)  # [B, S, heads, head_dim]: the same rotation as diffusers'
    freqs = transformer_flux.FluxPosEmbed(theta=10000, axes_dim=(2, 2, 4))(torch.rand(5, 3) * 4)
    torch.testing.assert_close(
        rotate(x, freqs, sequence_dim=1), original(x, freqs, sequence_dim=1).double(), rtol=1e-6, atol=1e-6
    )
    monkeypatch.setattr(transformer_flux, "apply_rotary_emb", rotate)
