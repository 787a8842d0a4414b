"""Small models and rewards shared by the core's tests."""

from __future__ import annotations

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


def step_inputs(model, sampler, reward, prompts, seed: int = 0) -> StepInputs:
    cond = model.encode_prompts(prompts)
    noise = model.make_noise(len(prompts), torch.Generator().manual_seed(seed), dtype=model.dtype)
    return StepInputs(model, sampler, reward, cond, noise, torch.Generator().manual_seed(seed + 100))


def grads_of(estimator, inputs, params):
    for p in params:
        p.grad = None
    out = estimator(inputs)
    out.loss.backward()
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params], out
