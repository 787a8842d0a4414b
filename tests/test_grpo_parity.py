"""Parity with the reference code's settings: grpo's exact Gaussian KL against Flow-GRPO's (1/|dt| apart,
112x at SD3.5's last step), Flow-GRPO's timestep_fraction (the first steps, in order), and DanceGRPO's
sampler (flow-sde with diffusion: dance-grpo) against its step and log-probability written out."""

from __future__ import annotations

import math

import pytest
import torch
from flow_fixtures import flow_with_lora
from model_fixtures import step_inputs

from draft_core.errors import ConfigError
from draft_core.lora import adapters_enabled
from draft_core.samplers import FlowSDESampler
from draft_core.samplers.gaussian import kl_same_std, log_prob
from draft_estimators import GRPO


class ValuesOnly:
    differentiable = False

    def __call__(self, images, prompts):
        with torch.no_grad():
            return images[:, 0].flatten(1).mean(1) - images[:, 2].flatten(1).mean(1)


@pytest.fixture(scope="module")
def flow():
    return flow_with_lora(torch.float64)


def test_flow_grpo_kl_is_dt_times_the_exact_kl_112x_at_sd35s_last_step(flow):
    """Flow-GRPO's code: mean_e(Δμ²)/(2·std_dev_t²), std_dev_t = eta·√(σ/(1 − σ)) without the step's √|dt|.
    On the SD3.5 schedule (shift 3, the flow fixture's), 10 steps: the exact KL is 1/|dt| times larger."""
    model, _ = flow
    sampler = FlowSDESampler(steps=10, guidance_scale=1.0, eta=0.7)
    sched = sampler.scheduler(model)
    cond = model.encode_prompts(["a cat"])
    x = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    factors = []
    for i in range(sampler.num_steps):
        with torch.no_grad():
            mean, std = sampler.transition_distribution(model, x, i, cond)
            ref = sampler.transition_distribution(model, x, i, cond, lora_on=False)[0]
        sigma = sched.sigmas[i].double()
        one_minus = 1 - sigma if sigma < 1 else 1 - sched.sigmas[1].double()  # Flow-GRPO's stand-in at σ = 1
        std_dev_t = 0.7 * (sigma / one_minus).sqrt()
        theirs = (mean - ref).pow(2).mean() / (2 * std_dev_t**2)
        ours = kl_same_std(mean, ref, std)
        factor = -1 / (sched.sigmas[i + 1] - sched.sigmas[i]).double()  # dt taken in float32, as the step takes it
        assert ours.item() == pytest.approx(factor.item() * theirs.item(), rel=1e-9)
        factors.append(factor.item())
    assert factors[-1] == pytest.approx(112.0, abs=0.1)  # σ 0.0089 → 0
    assert min(factors[:9]) == pytest.approx(3.7, abs=0.05) and max(factors[:9]) == pytest.approx(25.1, abs=0.05)


def grpo_case(flow, steps, **kwargs):
    model, params = flow
    sampler = FlowSDESampler(steps=steps, guidance_scale=1.0)
    inputs = step_inputs(model, sampler, ValuesOnly(), ["a cat"])
    est = GRPO(group_size=2, **kwargs)
    return est, est(inputs), inputs


def test_timestep_selection_first_trains_flow_grpos_first_steps_in_order(flow):
    est, out, inputs = grpo_case(
        flow, 10, timestep_fraction=0.99, timestep_selection="first", inner_epochs=2, minibatches=2
    )
    assert est.buffer["order"].tolist() == [list(range(9))] * 4  # int(0.99·10) = 9: never the last step
    assert out.logs["ppo_steps"] == 9.0
    # The call's loss is the PPO loss over exactly those steps (its first minibatch).
    idx = torch.tensor_split(est.buffer["perms"][0], 2)[0]
    again, _ = est.ppo_loss(inputs.model, inputs.sampler, idx, list(range(9)))
    assert out.loss.item() == pytest.approx(again.item(), rel=1e-12)
    random, _, _ = grpo_case(flow, 4, timestep_fraction=0.5, inner_epochs=4)
    rows = [sorted(r) for r in random.buffer["order"].tolist()]
    assert all(len(set(r)) == 2 for r in rows) and any(r != [0, 1] for r in rows)  # DDPO's: random subsets
    assert "timestep_selection=first" in repr(est)
    with pytest.raises(ConfigError, match="estimator.timestep_selection must be 'random'"):
        GRPO(timestep_selection="last")


def test_dance_grpo_sampler_is_its_step_and_log_probability_written_out(flow):
    """DanceGRPO's flux_step: mean = x + dσ·v − ½eta²·score·dσ, score = −(x − (1 − σ)·x̂0)/σ², x̂0 = x − σ·v,
    std = eta·√(σ − σ_next), log p = mean_e[−(x' − mean)²/(2 std²) − log std − log √(2π)]."""
    model, _ = flow
    eta = 0.3
    sampler = FlowSDESampler(steps=4, guidance_scale=3.0, eta=eta, diffusion="dance-grpo")
    sched = sampler.scheduler(model)
    cond = model.encode_prompts(["a cat"])
    g = torch.Generator().manual_seed(1)
    x = torch.randn((1, 3, 8, 8), generator=g, dtype=torch.float64)
    for i in range(sampler.num_steps):
        sigma = sched.sigmas[i].double()
        with torch.no_grad(), adapters_enabled(model.transformer, True):
            v = sampler.action(model, x, i, cond)
            mean, std = sampler.transition_distribution(model, x, i, cond)
            z = sampler.draw_step_noise(x, g)
            x_next = sampler.transition(model, x, i, v, z)
        x0_hat = x - sigma * v
        score = -(x - x0_hat * (1 - sigma)) / sigma**2
        d_sigma = (sched.sigmas[i + 1] - sched.sigmas[i]).double()  # in float32, as the scheduler's step takes it
        mean_hand = x + d_sigma * v - 0.5 * eta**2 * score * d_sigma
        std_hand = eta * math.sqrt(-d_sigma)
        torch.testing.assert_close(mean, mean_hand, rtol=1e-12, atol=1e-12)
        assert std.item() == pytest.approx(std_hand, rel=1e-12)
        torch.testing.assert_close(x_next, mean_hand + std_hand * z, rtol=1e-12, atol=1e-12)
        by_hand = (
            -((x_next - mean_hand) ** 2) / (2 * std_hand**2) - math.log(std_hand) - math.log(math.sqrt(2 * math.pi))
        ).mean()
        assert log_prob(x_next, mean, std).item() == pytest.approx(by_hand.item(), rel=1e-12)
        x = x_next
    assert "dance-grpo" in repr(sampler)
    with pytest.raises(ConfigError, match="sampler.diffusion must be"):
        FlowSDESampler(diffusion="dance")
