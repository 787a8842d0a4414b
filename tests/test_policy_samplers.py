"""Each stochastic sampler's step Gaussian: its log-density against the DDIM/DDPM formulas written
out in float64, LoRA on and off, and its agreement with diffusers' own step."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from model_fixtures import tiny_with_lora

from draft_core.errors import ConfigError
from draft_core.lora import adapters_enabled
from draft_core.samplers import DDPMSampler
from draft_core.samplers.ddim import DDIMSampler
from draft_core.samplers.gaussian import kl_same_std, log_prob
from draft_estimators import DDPO
from draft_estimators.policy import rollout

PROMPTS = ["a cat", "a dog"]
V_PRED = {"prediction_type": "v_prediction", "set_alpha_to_one": True, "steps_offset": 0}


def guided(model, x, t, cond, scale, lora_on=True):
    """Classifier-free guidance written out: out(∅) + g (out(c) − out(∅))."""
    with adapters_enabled(model.unet, lora_on):
        u = model.unet(x, t, encoder_hidden_states=cond.uncond.expand(x.shape[0], -1, -1)).sample
        c = model.unet(x, t, encoder_hidden_states=cond.cond).sample
    return u + scale * (c - u)


def x0_and_eps(model, x, out, a_t):
    if model.scheduler_config["prediction_type"] == "v_prediction":
        return a_t.sqrt() * x - (1 - a_t).sqrt() * out, a_t.sqrt() * out + (1 - a_t).sqrt() * x
    return (x - (1 - a_t).sqrt() * out) / a_t.sqrt(), out


def gaussian_by_hand(model, sampler, x, step, cond, lora_on):
    """(mean, std) of the step from the papers' formulas in float64 (DDIM eq. 12/16, DDPM eq. 6/7)."""
    sched = sampler.scheduler(model)
    ac = sched.alphas_cumprod.double()
    ts = sched.timesteps
    t = int(ts[step])
    out = guided(model, x, ts[step], cond, sampler.guidance_scale, lora_on)
    a_t = ac[t]
    if isinstance(sampler, DDIMSampler):
        prev = t - sched.config.num_train_timesteps // sampler.num_steps
        final = torch.tensor(1.0, dtype=torch.float64) if sched.config.set_alpha_to_one else ac[0]
        a_prev = ac[prev] if prev >= 0 else final
        x0, eps = x0_and_eps(model, x, out, a_t)
        std = sampler.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps, std
    prev = int(ts[step + 1]) if step + 1 < len(ts) else -1
    a_prev = ac[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    beta = 1 - a_t / a_prev
    x0, _ = x0_and_eps(model, x, out, a_t)
    mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (a_t / a_prev).sqrt() * (1 - a_prev) / (1 - a_t) * x
    return mean, ((1 - a_prev) / (1 - a_t) * beta).sqrt()


def density_by_hand(x, mean, std):
    """log N(x; mean, std²), averaged over each sample's elements."""
    z = (x - mean) / std
    return (-0.5 * z**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)


SAMPLERS = {
    "ddim-eta1": lambda: DDIMSampler(steps=4, guidance_scale=3.0, eta=1.0),
    "ddim-eta0.5": lambda: DDIMSampler(steps=4, guidance_scale=3.0, eta=0.5),
    "ddpm": lambda: DDPMSampler(steps=4, guidance_scale=3.0),
}


@pytest.fixture(scope="module", params=[{}, V_PRED], ids=["eps-sd14", "v-pred"])
def model(request):
    return tiny_with_lora(torch.float64, scheduler_overrides=request.param)[0]


@pytest.mark.parametrize("lora_on", [True, False], ids=["lora-on", "lora-off"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_step_log_prob_is_the_gaussian_density_written_out(model, name, lora_on):
    sampler = SAMPLERS[name]()
    cond = model.encode_prompts(PROMPTS)
    g = torch.Generator().manual_seed(0)
    checked = 0
    for step in range(sampler.num_steps):
        x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
        with torch.no_grad():
            mean, std = sampler.transition_distribution(model, x, step, cond, lora_on=lora_on)
            hand_mean, hand_std = gaussian_by_hand(model, sampler, x, step, cond, lora_on)
            if hand_std == 0:  # a step without noise (DDPM's last): no density, std reported as 0
                assert float(std) == 0.0
                continue
            x_next = hand_mean + hand_std * torch.randn(x.shape, generator=g, dtype=torch.float64)
            ours, hand = log_prob(x_next, mean, std), density_by_hand(x_next, hand_mean, hand_std)
        # diffusers keeps ᾱ in float32 and takes its square roots there: the mean agrees to ~1e-7
        # relative, i.e. ~1e-7/σ in a log-density of order 1 (σ >= 0.01 here).
        torch.testing.assert_close(ours, hand, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            log_prob(x_next, mean, std, reduction="sum"), hand * x[0].numel(), rtol=1e-5, atol=1e-3
        )
        checked += 1
    assert checked >= sampler.num_steps - 1


def test_lora_on_and_off_are_different_policies():
    model = tiny_with_lora(torch.float64)[0]
    sampler = SAMPLERS["ddim-eta1"]()
    cond = model.encode_prompts(PROMPTS)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        on, std = sampler.transition_distribution(model, x, 1, cond)
        off, _ = sampler.transition_distribution(model, x, 1, cond, lora_on=False)
    assert (on - off).abs().max() > 1e-4
    torch.testing.assert_close(kl_same_std(on, off, std), ((on - off) ** 2 / (2 * std**2)).flatten(1).mean(1))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_the_gaussian_is_the_samplers_own_diffusers_step(model, name):
    """mean + std·z is what the sampler's scheduler step gives with noise z (DDIM: bit for bit)."""
    sampler = SAMPLERS[name]()
    cond = model.encode_prompts(PROMPTS)
    sched = sampler.scheduler(model)
    g = torch.Generator().manual_seed(2)
    for step in range(sampler.num_steps):
        x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
        with torch.no_grad():
            out = sampler.action(model, x, step, cond)
            mean, std = sampler.step_gaussian(sched, out, sched.timesteps[step], x)
            if isinstance(sampler, DDIMSampler):
                z = torch.randn(x.shape, generator=g, dtype=torch.float64)
                assert torch.equal(sampler.scheduler_step(sched, out, sched.timesteps[step], x, z)[0], mean + std * z)
            else:
                stepped = sampler.scheduler_step(sched, out, sched.timesteps[step], x, 1234 + step)[0]
                z = randn_tensor(x.shape, generator=torch.Generator().manual_seed(1234 + step), dtype=torch.float64)
                # float64 throughout; diffusers adds 1e-10·z where the variance is 0 (reported as std 0).
                torch.testing.assert_close(stepped, mean + std * z, rtol=1e-12, atol=1e-9)


def test_rollout_is_the_ddim_samplers_own_sampling():
    model = tiny_with_lora()[0]
    sampler = SAMPLERS["ddim-eta1"]()
    cond = model.encode_prompts(PROMPTS)
    noise = model.make_noise(2, torch.Generator().manual_seed(0))
    latents, log_probs, stds = rollout(sampler, model, cond, noise, torch.Generator().manual_seed(3))
    with torch.no_grad():
        trace = []
        final = sampler.sample(model, cond, noise, generator=torch.Generator().manual_seed(3), trace=trace)
    assert torch.equal(latents[-1], final)
    assert all(torch.equal(latents[i], x) for i, x in trace)
    assert log_probs.shape == (4, 2) and torch.isfinite(log_probs).all() and (stds > 0).all()


def test_deterministic_samplers_are_refused_by_policy_estimators():
    with pytest.raises(ConfigError, match="stochastic sampler"):
        DDPO().check(DDIMSampler(steps=3))
    DDPO().check(DDIMSampler(steps=3, eta=1.0))
    DDPO().check(DDPMSampler(steps=3))
    with pytest.raises(NotImplementedError):
        DDIMSampler(steps=3).step_gaussian(None, None, None, None)
