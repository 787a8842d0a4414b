"""The flow samplers against diffusers' own ``FlowMatchEulerDiscreteScheduler``: ``euler``'s steps equal a
fresh scheduler's ``.step()`` loop bit for bit (shift 1 and 3, dynamic shifting with ``mu``, FLUX's custom
sigmas, a terminal shift, Karras sigmas), re-noising equals its ``scale_noise``, and x̂0 = x − σ·v."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from draft_core.errors import ConfigError
from draft_core.models.conditioning import Conditioning
from draft_core.samplers import EulerSampler, FlowSDESampler

STEPS = 4


class VelocityField:
    """A stand-in model: scheduler config, timestep kwargs, and a smooth velocity of (x, t, prompt)."""

    device = torch.device("cpu")
    denoiser = torch.nn.Identity()  # no adapters: the LoRA switch has nothing to switch

    def __init__(self, scheduler_config: dict, timestep_kwargs=None) -> None:
        self.scheduler_config = scheduler_config
        self._kwargs = timestep_kwargs or (lambda n: {})

    def timestep_kwargs(self, num_steps):
        return self._kwargs(num_steps)

    def velocity(self, x, t, text):
        return torch.tanh(1.3 * x + t / 1000) - 0.7 * x + text

    def denoise(self, x, t, cond, guidance=1.0):
        c = self.velocity(x, t, cond.cond.view(-1, 1, 1, 1))
        if guidance == 1.0:
            return c
        u = self.velocity(x, t, cond.uncond.view(-1, 1, 1, 1))
        return u + guidance * (c - u)


def flux_kwargs(n):  # what FluxPipeline passes: linear sigmas from 1 to 1/n, shifted by mu
    return {"sigmas": np.linspace(1.0, 1 / n, n), "mu": 0.8}


SCHEDULES = {
    "shift1": ({}, None),
    "shift3": ({"shift": 3.0}, None),
    "dynamic-mu": ({"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}, lambda n: {"mu": 1.1}),
    "flux-sigmas-mu": ({"use_dynamic_shifting": True, "shift": 3.0}, flux_kwargs),
    "shift-terminal": ({"shift": 3.0, "shift_terminal": 0.1}, None),
    "karras": ({"use_karras_sigmas": True}, None),
    "linear-time-shift": ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, lambda n: {"mu": 0.6}),
}


def fake_cond(batch=2):
    return Conditioning(torch.linspace(-0.3, 0.4, batch), torch.zeros(1), [""] * batch)


def model_for(name):
    overrides, kwargs = SCHEDULES[name]
    # A scheduler_config.json as a model folder has it (not a live config: its _use_default_values
    # would make from_config ignore the overrides).
    return VelocityField({"_class_name": "FlowMatchEulerDiscreteScheduler", **overrides}, kwargs)


def diffusers_loop(model, noise, cond, guidance):
    """x_0 = noise, then a fresh scheduler's own ``step`` at each of its timesteps."""
    sched = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(STEPS, **model.timestep_kwargs(STEPS))
    x, xs = noise, [noise]
    for t in sched.timesteps:
        x = sched.step(model.denoise(x, t, cond, guidance), t, x).prev_sample
        xs.append(x)
    return xs, sched


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("guidance", [1.0, 3.5])
def test_euler_is_the_diffusers_scheduler_step_loop_bit_for_bit(name, guidance):
    model = model_for(name)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = fake_cond()
    expected, ref = diffusers_loop(model, noise, cond, guidance)
    sampler = EulerSampler(steps=STEPS, guidance_scale=guidance)
    assert torch.equal(sampler.timesteps(model), ref.timesteps)
    trace = []
    final = sampler.sample(model, cond, noise, trace=trace)
    assert [i for i, _ in trace] == list(range(STEPS))
    for (i, x), x_ref in zip(trace, expected):
        assert torch.equal(x, x_ref), f"step {i} input differs"
    assert torch.equal(final, expected[-1])
    # The same arithmetic differentiable and checkpointed (the path DRaFT takes).
    assert torch.equal(sampler.sample(model, cond, noise, grad_from=0, checkpoint=True), expected[-1])


def test_the_schedules_differ():
    """The parametrisation above tests distinct schedules (a shift that changed nothing would hide a bug)."""
    sigmas = [FlowSDESampler(steps=STEPS).scheduler(model_for(name)).sigmas for name in SCHEDULES]
    for a in range(len(sigmas)):
        for b in range(a):
            assert not torch.allclose(sigmas[a], sigmas[b]), (list(SCHEDULES)[a], list(SCHEDULES)[b])


@pytest.mark.parametrize("name", ["shift3", "flux-sigmas-mu"])
def test_x0_prediction_and_renoising_are_the_flow_formulas(name):
    model = model_for(name)
    sampler = EulerSampler(steps=STEPS, guidance_scale=2.0)
    sched = sampler.scheduler(model)
    cond = fake_cond()
    g = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        x0 = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
        eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
        sigma = sched.sigmas[step].double()
        x = sampler.add_noise(model, x0, eps, step)
        torch.testing.assert_close(x, (1 - sigma) * x0 + sigma * eps, rtol=1e-15, atol=1e-15)
        # diffusers' forward process, in float32: scale_noise at this step's timestep.
        ref = sched.scale_noise(x0.float(), sched.timesteps[step : step + 1].expand(2), eps.float())
        assert torch.equal(sampler.add_noise(model, x0.float(), eps.float(), step), ref)
        v = model.denoise(x, sched.timesteps[step], cond, 2.0)
        torch.testing.assert_close(sampler.predict_x0(model, x, step, cond), x - sigma * v, rtol=1e-15, atol=1e-15)


def test_inverted_sigmas_are_refused_with_a_sentence():
    config = {"invert_sigmas": True}
    with pytest.raises(ConfigError, match="invert_sigmas"):
        EulerSampler(steps=STEPS).sample(VelocityField(config), fake_cond(), torch.zeros(2, 3, 4, 4))


def test_flow_samplers_are_registered_as_flow_matching():
    from draft_core.plugins.discovery import load_registry

    registry = load_registry(report=False)
    for name, cls in (("euler", EulerSampler), ("flow-sde", FlowSDESampler)):
        assert registry.get("sampler", name).factory is cls
        assert cls.flow_matching and cls.scheduler_class is FlowMatchEulerDiscreteScheduler
    assert not EulerSampler.stochastic and FlowSDESampler(eta=0.7).stochastic and not FlowSDESampler(eta=0).stochastic
