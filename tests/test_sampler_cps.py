"""The ``cps`` sampler (Coefficients-Preserving Sampling): its step keeps x = (1 − σ)·x0 + σ·ε exact in
distribution (closed form, and along a whole chain on Gaussian data), its log-probability is
torch.distributions.Normal's density of the step written out in float64, its rollout is its own
sampling, and the policy-gradient estimators train on it (the estimator checklist)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from flow_fixtures import FLOW_SCHEDULER, flow_with_lora

from draft_core.errors import ConfigError
from draft_core.lora import adapters_enabled
from draft_core.samplers import CPSSampler, EulerSampler, FlowSDESampler
from draft_core.samplers.gaussian import log_prob
from draft_core.testing.estimators import EstimatorConformance
from draft_estimators import GRPO
from draft_estimators.policy import rollout

PROMPTS = ["a cat", "a dog"]


def schedule(steps: int):
    sched = FlowMatchEulerDiscreteScheduler.from_config(FLOW_SCHEDULER)  # shift 3: unequal steps
    sched.set_timesteps(steps)
    return sched


def step_coefficients(sampler, sched, i):
    """The step with the oracle velocity v = ε − x0 is affine: x_s = a·x0 + b·ε + std·z. Returns (a, b, std)
    in float64, read off by evaluating the step's mean at x0 = 1, ε = 0 and x0 = 0, ε = 1."""
    sigma = sched.sigmas[i].double()

    def mean_at(x0, eps):
        x0, eps = torch.full((1, 1), x0, dtype=torch.float64), torch.full((1, 1), eps, dtype=torch.float64)
        mean, std, _ = sampler._gaussian(sched, eps - x0, i, (1 - sigma) * x0 + sigma * eps)
        return mean.item(), float(std)

    (a, std), (b, _) = mean_at(1.0, 0.0), mean_at(0.0, 1.0)
    return a, b, std


@pytest.mark.parametrize("eta", [0.3, 0.8, 1.0])
def test_the_step_preserves_the_coefficients_in_closed_form(eta):
    """Given x0, x_t ~ N((1 − σ_t)·x0, σ_t²) goes to x_s ~ N((1 − σ_s)·x0, σ_s²): a = 1 − σ_s, b² + std² = σ_s²."""
    sampler, sched = CPSSampler(steps=5, eta=eta), schedule(5)
    for i in range(5):
        sigma_next = sched.sigmas[i + 1].double().item()
        a, b, std = step_coefficients(sampler, sched, i)
        # float64 arithmetic on float32 sigmas taken as exact: agreement to rounding.
        assert a == pytest.approx(1 - sigma_next, rel=1e-12, abs=1e-14)
        assert b**2 + std**2 == pytest.approx(sigma_next**2, rel=1e-12, abs=1e-14)
        assert std == pytest.approx(sigma_next * math.sin(eta * math.pi / 2), rel=1e-12, abs=1e-14)
    # flow-sde does not: its first step from pure noise leaves more noise than the level's σ_s (the reason for CPS).
    a, b, std = step_coefficients(FlowSDESampler(steps=5, eta=0.7), sched, 0)
    assert b**2 + std**2 > 1.05 * sched.sigmas[1].item() ** 2


def test_a_whole_chain_on_gaussian_data_keeps_the_marginals():
    """x0 ~ N(0.5, 0.3²) per element, the oracle velocity, every step of the sampler's own ``step_at``:
    after each step, (x − (1 − σ)·x0)/σ is standard normal and independent of x0 (n = 40000 draws)."""
    sampler, sched = CPSSampler(steps=4, eta=0.8), schedule(4)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    x0 = 0.5 + 0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)  # σ_0 = 1: pure noise
    for i in range(3):  # the last step lands on σ = 0 (x0 itself)
        sigma = sched.sigmas[i].double()
        v = (x - (1 - sigma) * x0) / sigma - x0  # ε − x0 with ε the noise x carries
        x, _ = sampler.step_at(sched, v, i, x, torch.randn(n, 1, generator=g, dtype=torch.float64))
        s = sched.sigmas[i + 1].double()
        eps = (x - (1 - s) * x0) / s
        # sampling errors of a mean, a variance and a correlation of n draws: 1/√n, √(2/n), 1/√n; 5 of them.
        assert abs(eps.mean().item()) < 5 / math.sqrt(n)
        assert abs(eps.var().item() - 1) < 5 * math.sqrt(2 / n)
        assert abs(torch.corrcoef(torch.cat([eps, x0], 1).T)[0, 1].item()) < 5 / math.sqrt(n)


@pytest.fixture(scope="module")
def model():
    return flow_with_lora(torch.float64)[0]


@pytest.mark.parametrize("lora_on", [True, False], ids=["lora-on", "lora-off"])
def test_step_log_prob_is_the_normal_density_of_the_cps_step_written_out(model, lora_on):
    sampler = CPSSampler(steps=3, guidance_scale=3.0, eta=0.8)
    cond = model.encode_prompts(PROMPTS)
    sched = sampler.scheduler(model)
    g = torch.Generator().manual_seed(0)
    for step in range(2):  # the last step draws no noise
        x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
        with torch.no_grad():
            mean, std = sampler.transition_distribution(model, x, step, cond, lora_on=lora_on)
            with adapters_enabled(model.denoiser, lora_on):
                v = model.denoise(x, sched.timesteps[step], cond, 3.0)  # the guided velocity
            sigma, sigma_s = sched.sigmas[step].double(), sched.sigmas[step + 1].double()
            x0_hat, x1_hat = x - sigma * v, x + (1 - sigma) * v
            s = sigma_s * math.sin(0.8 * math.pi / 2)
            hand_mean = (1 - sigma_s) * x0_hat + (sigma_s**2 - s**2).sqrt() * x1_hat
            x_next = hand_mean + s * torch.randn(x.shape, generator=g, dtype=torch.float64)
            normal = torch.distributions.Normal(hand_mean, s).log_prob(x_next)
        torch.testing.assert_close(std, s, rtol=1e-12, atol=0)
        torch.testing.assert_close(mean, hand_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(log_prob(x_next, mean, std), normal.flatten(1).mean(1), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(
            log_prob(x_next, mean, std, reduction="sum"), normal.flatten(1).sum(1), rtol=1e-10, atol=1e-8
        )


def test_rollout_is_the_samplers_own_sampling_and_the_last_step_is_deterministic(model):
    sampler = CPSSampler(steps=3, guidance_scale=3.0)
    cond = model.encode_prompts(PROMPTS)
    noise = model.make_noise(2, torch.Generator().manual_seed(0), dtype=torch.float64)
    latents, log_probs, stds = rollout(sampler, model, cond, noise, torch.Generator().manual_seed(3))
    with torch.no_grad():
        trace = []
        final = sampler.sample(model, cond, noise, generator=torch.Generator().manual_seed(3), trace=trace)
    assert torch.equal(latents[-1], final) and all(torch.equal(latents[i], x) for i, x in trace)
    assert (stds[:-1] > 0).all() and stds[-1] == 0 and (log_probs[-1] == 0).all()


def test_eta_zero_is_the_euler_step_and_bad_eta_is_refused(model):
    cond = model.encode_prompts(PROMPTS)
    noise = model.make_noise(2, torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        cps = CPSSampler(steps=3, guidance_scale=3.0, eta=0.0).sample(model, cond, noise)
        euler = EulerSampler(steps=3, guidance_scale=3.0).sample(model, cond, noise)
    # The same step rearranged; euler takes dt = σ_s − σ_t in float32 as diffusers does (rounding ~6e-8 of dt·v).
    torch.testing.assert_close(cps, euler, rtol=1e-6, atol=1e-6)
    assert not CPSSampler(eta=0.0).stochastic and CPSSampler().stochastic
    for bad in (1.5, -0.1, True, "0.8"):
        with pytest.raises(ConfigError, match="sampler.eta must be a number in"):
            CPSSampler(eta=bad)


class TestGRPOOnCPS(EstimatorConformance):
    """grpo on cps: the policy-gradient estimators train on its step log-probabilities."""

    @pytest.fixture(scope="class")
    @classmethod
    def setup(cls):
        return flow_with_lora(torch.float32)

    def make_estimator(self):
        return GRPO(group_size=2)

    def make_sampler(self):
        return CPSSampler(steps=self.steps, guidance_scale=3.0)

    def make_unsupported_sampler(self):
        return CPSSampler(steps=self.steps, guidance_scale=3.0, eta=0.0)
