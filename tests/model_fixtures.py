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


def assert_central_differences(loss_at, grads, params, directions: int = 3, h: float = 1e-5, rel: float = 1e-6,
                               seed: int = 0) -> None:
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
