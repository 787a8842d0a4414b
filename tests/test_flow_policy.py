"""flow-sde as a policy (Flow-GRPO): each step's Gaussian against Flow-GRPO's formula written out in
float64, LoRA on and off; the Gaussian is the sampler's own step; ddpo and grpo train on it (the
estimator checklist) and refuse the deterministic ``euler``."""

from __future__ import annotations

import math

import pytest
import torch
from flow_fixtures import flow_with_lora

from draft_core.errors import ConfigError
from draft_core.lora import adapters_enabled
from draft_core.samplers import EulerSampler, FlowSDESampler
from draft_core.samplers.gaussian import kl_same_std, log_prob
from draft_core.testing.estimators import EstimatorConformance
from draft_estimators import DDPO, GRPO
from draft_estimators.policy import rollout

PROMPTS = ["a cat", "a dog"]


@pytest.fixture(scope="module")
def model():
    return flow_with_lora(torch.float64)[0]


def guided_velocity(model, x, t, cond, scale, lora_on=True):
    """Classifier-free guidance on the transformer, written out: v(∅) + g (v(c) − v(∅))."""

    def v(embeds, pooled):
        return model.transformer(
            hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample

    with adapters_enabled(model.transformer, lora_on):
        u = v(cond.uncond.expand(x.shape[0], -1, -1), cond.uncond_pooled.expand(x.shape[0], -1))
        c = v(cond.cond, cond.pooled)
    return u + scale * (c - u)


def flow_grpo_gaussian(model, sampler, x, step, cond, lora_on):
    """(mean, std) as Flow-GRPO's ``sde_step_with_logprob`` writes them, in float64."""
    sched = sampler.scheduler(model)
    sigmas = sched.sigmas.double()
    sigma, sigma_prev, sigma_max = sigmas[step], sigmas[step + 1], sigmas[1]
    dt = sigma_prev - sigma
    v = guided_velocity(model, x, sched.timesteps[step], cond, sampler.guidance_scale, lora_on)
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * sampler.eta
    mean = x * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, std_dev_t * torch.sqrt(-dt)


def density_by_hand(x, mean, std):
    z = (x - mean) / std
    return (-0.5 * z**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)


@pytest.mark.parametrize("lora_on", [True, False], ids=["lora-on", "lora-off"])
@pytest.mark.parametrize("eta", [0.7, 1.0])
def test_step_log_prob_is_flow_grpos_gaussian_written_out(model, eta, lora_on):
    sampler = FlowSDESampler(steps=4, guidance_scale=3.0, eta=eta)
    cond = model.encode_prompts(PROMPTS)
    g = torch.Generator().manual_seed(0)
    for step in range(sampler.num_steps):
        x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
        with torch.no_grad():
            mean, std = sampler.transition_distribution(model, x, step, cond, lora_on=lora_on)
            hand_mean, hand_std = flow_grpo_gaussian(model, sampler, x, step, cond, lora_on)
            x_next = hand_mean + hand_std * torch.randn(x.shape, generator=g, dtype=torch.float64)
            ours, hand = log_prob(x_next, mean, std), density_by_hand(x_next, hand_mean, hand_std)
        # Float64 throughout except dt, which the sampler takes as diffusers does, from float32 sigmas:
        # that rounding (<= 6e-8) moves the mean by ~1e-7 of the drift, the log-density by ~1e-6 at std ~0.1.
        torch.testing.assert_close(std, hand_std, rtol=1e-6, atol=0)
        torch.testing.assert_close(ours, hand, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            log_prob(x_next, mean, std, reduction="sum"), hand * x[0].numel(), rtol=1e-5, atol=1e-3
        )


def test_lora_on_and_off_are_different_policies(model):
    sampler = FlowSDESampler(steps=4, guidance_scale=3.0)
    cond = model.encode_prompts(PROMPTS)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        on, std = sampler.transition_distribution(model, x, 1, cond)
        off, _ = sampler.transition_distribution(model, x, 1, cond, lora_on=False)
    assert (on - off).abs().max() > 1e-4
    torch.testing.assert_close(kl_same_std(on, off, std), ((on - off) ** 2 / (2 * std**2)).flatten(1).mean(1))


def test_the_gaussian_is_the_samplers_own_step_and_rollout_its_sampling(model):
    sampler = FlowSDESampler(steps=4, guidance_scale=3.0)
    cond = model.encode_prompts(PROMPTS)
    sched = sampler.scheduler(model)
    g = torch.Generator().manual_seed(2)
    for step in range(sampler.num_steps):
        x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
        z = torch.randn(x.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            out = sampler.action(model, x, step, cond)
            mean, std = sampler.step_gaussian(sched, out, sched.timesteps[step], x)
            assert torch.equal(sampler.transition(model, x, step, out, z), mean + std * z)
    noise = model.make_noise(2, torch.Generator().manual_seed(0), dtype=torch.float64)
    latents, log_probs, stds = rollout(sampler, model, cond, noise, torch.Generator().manual_seed(3))
    with torch.no_grad():
        trace = []
        final = sampler.sample(model, cond, noise, generator=torch.Generator().manual_seed(3), trace=trace)
    assert torch.equal(latents[-1], final) and all(torch.equal(latents[i], x) for i, x in trace)
    assert log_probs.shape == (4, 2) and torch.isfinite(log_probs).all() and (stds > 0).all()


@pytest.mark.parametrize("estimator", [DDPO(), GRPO(group_size=2)], ids=["ddpo", "grpo"])
@pytest.mark.parametrize(
    "sampler", [EulerSampler(steps=3), FlowSDESampler(steps=3, eta=0.0)], ids=["euler", "sde-eta0"]
)
def test_policy_estimators_refuse_deterministic_flow_samplers(estimator, sampler):
    with pytest.raises(ConfigError, match="flow-sde with eta > 0"):
        estimator.check(sampler)


class FlowModelChecklist(EstimatorConformance):
    """The estimator checklist on the tiny pixel-space sd3 model (a LoRA on attention and feed-forward)."""

    @pytest.fixture(scope="class")
    @classmethod
    def setup(cls):
        return flow_with_lora(torch.float32)

    def make_sampler(self):
        return FlowSDESampler(steps=self.steps, guidance_scale=3.0)

    def make_unsupported_sampler(self):
        return EulerSampler(steps=self.steps, guidance_scale=3.0)


class TestFlowGRPO(FlowModelChecklist):
    def make_estimator(self):
        return GRPO(group_size=2, beta=0.1, minibatches=2)


class TestFlowDDPO(FlowModelChecklist):
    def make_estimator(self):
        return DDPO()
