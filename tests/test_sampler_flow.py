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


@pytest.mark.parametrize("sampler_class", [EulerSampler, FlowSDESampler])
@pytest.mark.parametrize("name", ["shift3", "flux-sigmas-mu"])
def test_x0_prediction_and_renoising_are_the_flow_formulas(name, sampler_class):
    model = model_for(name)
    sampler = sampler_class(steps=STEPS, guidance_scale=2.0)
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


# -- flow-sde ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shift3", "flux-sigmas-mu"])
def test_flow_sde_with_eta_0_is_euler_bit_for_bit(name):
    model, cond = model_for(name), fake_cond()
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    euler = EulerSampler(steps=STEPS, guidance_scale=3.5).sample(model, cond, noise)
    sde = FlowSDESampler(steps=STEPS, guidance_scale=3.5, eta=0.0)
    assert torch.equal(sde.sample(model, cond, noise, generator=torch.Generator().manual_seed(1)), euler)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    for step in range(STEPS):
        mean, std = sde.transition_distribution(model, x, step, cond)
        assert float(std) == 0.0 and torch.equal(
            mean,
            EulerSampler(steps=STEPS, guidance_scale=3.5).transition(
                model, x, step, model.denoise(x, sde.timesteps(model)[step], cond, 3.5)
            ),
        )


class GaussianData(VelocityField):
    """Data x0 ~ N(m, s²) per element: the exact velocity E[ε − x0 | x_σ] of x_σ = (1 − σ)x0 + σε is linear in x."""

    m, s = 0.5, 0.3

    def variance(self, sigma):
        return (1 - sigma) ** 2 * self.s**2 + sigma**2

    def denoise(self, x, t, cond, guidance=1.0):
        sigma = (t / 1000).to(x.dtype)
        centred = x - (1 - sigma) * self.m
        eps = sigma / self.variance(sigma) * centred
        x0 = self.m + (1 - sigma) * self.s**2 / self.variance(sigma) * centred
        return eps - x0


def marginal_errors(eta, steps):
    """Sample Gaussian data with its exact velocity from σ_0 = 0.95 (the state drawn from the flow's marginal
    there) and return max over the states x_i of |std(x_i)/std_i − 1| and |mean(x_i) − mean_i|/std_i, where
    N(mean_i, std_i²) = N((1 − σ_i)m, (1 − σ_i)²s² + σ_i²) is the flow's marginal at σ_i."""
    model = GaussianData(
        {"_class_name": "FlowMatchEulerDiscreteScheduler"}, lambda n: {"sigmas": np.linspace(0.95, 0.95 / n, n)}
    )
    sampler = FlowSDESampler(steps=steps, guidance_scale=1.0, eta=eta)
    sigmas = sampler.scheduler(model).sigmas.double()
    g = torch.Generator().manual_seed(0)
    x0 = model.m + model.s * torch.randn(4, 1, 100, 100, generator=g, dtype=torch.float64)
    start = (1 - sigmas[0]) * x0 + sigmas[0] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    trace = []
    final = sampler.sample(model, fake_cond(4), start, generator=torch.Generator().manual_seed(1), trace=trace)
    spread, shift = 0.0, 0.0
    for (_, x), sigma in zip([*trace, (steps, final)], sigmas):
        std = model.variance(sigma).sqrt().item()
        spread = max(spread, abs(x.std().item() / std - 1))
        shift = max(shift, abs(x.mean().item() - (1 - sigma.item()) * model.m) / std)
    return spread, shift


@pytest.mark.parametrize("eta", [0.7, 1.0])
def test_flow_sde_keeps_the_marginals_of_the_flow(eta):
    """The SDE's states have the flow's marginals up to Euler–Maruyama's error, which halves as the steps
    double (first order; measured: 2.7% -> 1.5% of the std at eta 0.7, 5.4% -> 2.4% at eta 1). The
    statistical error with 40,000 draws is ~0.5%. A score term with the wrong sign, or half or twice its
    size, leaves the std off by 290%, 28% and 29% at 80 steps."""
    coarse, _ = marginal_errors(eta, 40)
    fine, shift = marginal_errors(eta, 80)
    assert fine < 0.04 and fine < 0.6 * coarse
    assert shift < 0.02


def test_euler_on_tiny_sd3_is_stable_diffusion_3_pipelines_loop():
    """The sd3 family through ``euler`` (CFG 4, SD3.5's shift-3 schedule) gives the latents diffusers'
    ``StableDiffusion3Pipeline`` gives from the same initial latents."""
    from draft_core.models.tiny_sd3 import build_tiny_random_sd3

    model = build_tiny_random_sd3(seed=0)
    prompts = ["a cat", "a red dog"]
    noise = model.make_noise(2, torch.Generator().manual_seed(0))
    sampler = EulerSampler(steps=3, guidance_scale=4.0)
    with torch.no_grad():
        ours = sampler.sample(model, model.encode_prompts(prompts), noise)
        pipe = model.pipeline()
        pipe.set_progress_bar_config(disable=True)
        theirs = pipe(
            prompt=prompts,
            num_inference_steps=3,
            guidance_scale=4.0,
            latents=noise.clone(),
            output_type="latent",
            max_sequence_length=model.max_sequence_length,
        ).images
    # The same steps; the prompt encodings differ in float32 rounding only (measured: 3e-7 of the largest value).
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6 * theirs.abs().max().item())
