"""The ancestral sampler against diffusers' DDPMScheduler, and its gradients under checkpointing."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from model_fixtures import tiny_with_lora

from draft_core.samplers import DDPMSampler
from draft_core.samplers.ddim import DDIMSampler

PROMPTS = ["a cat", "a dog"]


@pytest.fixture(scope="module")
def model():
    return tiny_with_lora()[0]


def test_ddpm_matches_a_manual_diffusers_loop(model):
    """Same guided UNet outputs, DDPMScheduler.step with the same per-step generators."""
    sampler = DDPMSampler(steps=5, guidance_scale=4.0)
    cond = model.encode_prompts(PROMPTS)
    noise = model.make_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = sampler.sample(model, cond, noise, generator=torch.Generator().manual_seed(1))

        sched = DDPMScheduler.from_config(model.scheduler_config)
        sched.set_timesteps(5)
        seeds = torch.Generator().manual_seed(1)
        x = noise * sched.init_noise_sigma
        for t in sched.timesteps:
            seed = int(torch.randint(2**62, (1,), generator=seeds).item())
            out = model.unet(
                torch.cat([x, x]), t, encoder_hidden_states=torch.cat([cond.uncond.expand(2, -1, -1), cond.cond])
            ).sample
            u, c = out.chunk(2)
            x = sched.step(u + 4.0 * (c - u), t, x, generator=torch.Generator().manual_seed(seed)).prev_sample
    # float32 runs of the same arithmetic: equal up to a few ulps of the latents' scale (~20), which
    # near-zero elements carry too; a wrong step noise or guidance moves them by O(1).
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5 * x.abs().max().item())


def test_ddpm_is_stochastic_but_reproducible(model):
    sampler = DDPMSampler(steps=4)
    cond = model.encode_prompts(PROMPTS)
    noise = model.make_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = sampler.sample(model, cond, noise, generator=torch.Generator().manual_seed(5))
        b = sampler.sample(model, cond, noise, generator=torch.Generator().manual_seed(5))
        c = sampler.sample(model, cond, noise, generator=torch.Generator().manual_seed(6))
        ddim = DDIMSampler(steps=4).sample(model, cond, noise)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3 and (a - ddim).abs().max() > 1e-3


def test_ddpm_checkpointed_gradients_equal_plain_ones():
    model, params = tiny_with_lora(torch.float64)
    sampler = DDPMSampler(steps=4)
    cond = model.encode_prompts(PROMPTS)
    noise = model.make_noise(2, torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = []
    for checkpoint in (False, True):
        for p in params:
            p.grad = None
        x = sampler.sample(
            model, cond, noise, grad_from=1, checkpoint=checkpoint, generator=torch.Generator().manual_seed(3)
        )
        model.decode(x).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)


def test_ddpm_is_registered():
    from draft_core.plugins import load_registry

    assert isinstance(load_registry(refresh=True).build("sampler", "ddpm", steps=3), DDPMSampler)
