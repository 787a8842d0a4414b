"""The gradient estimators on flow models (the tiny pixel-space sd3 model): DRaFT and DRaFT-K against
float64 central differences through ``euler`` and ``flow-sde`` (K = T is DRaFT), DRaFT-LV and ReFL
against the flow formulas written out (x = (1 − σ)x0 + σε, x̂0 = x − σ·v), the KL term on the
velocity, and the estimator checklist for draft, draft-k, draft-lv, refl, kl and alignprop on ``euler``."""

from __future__ import annotations

import pytest
import torch
from flow_fixtures import flow_with_lora
from model_fixtures import LinearReward, assert_central_differences, grads_of, step_inputs

from draft_core.lora import adapters_enabled
from draft_core.samplers import EulerSampler, FlowSDESampler
from draft_core.testing.estimators import EstimatorConformance
from draft_estimators import FullBackprop, LowVariance, ReFL, TruncatedBackprop
from draft_estimators.kl import KLRegularized

PROMPTS = ["a cat", "a dog"]


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


def fd_case(sampler, estimator, prompts=PROMPTS[:1], seed=0):
    model, params = flow_with_lora(torch.float64)
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 8, 8), torch.float64), prompts, seed=seed)
    state = inputs.generator.get_state()
    grads, out = grads_of(estimator, inputs, params)
    return model, params, inputs, state, grads, out


def trajectory(model, sampler, inputs, state=None):
    """Each step's input x_i (no grad), drawing the step noise from ``state`` as the estimator did."""
    if state is not None:
        inputs.generator.set_state(state)
    trace = []
    with torch.no_grad():
        sampler.sample(model, inputs.cond, inputs.noise, trace=trace, generator=inputs.generator)
    return [x for _, x in trace]


def truncated_objective(model, sampler, inputs, state, first, stop_at=None):
    """L(θ) = −r(x0) with x_first held (stop-gradient) and the later steps following θ, drawing the
    same step noise; with ``stop_at``, x0 is the one-step prediction x̂0 at that step instead (ReFL)."""
    x_first = trajectory(model, sampler, inputs, state)[first]

    def loss_at():
        inputs.generator.set_state(state)
        draws = [sampler.draw_step_noise(x_first, inputs.generator) for _ in range(sampler.num_steps)]
        x = x_first
        with torch.no_grad():
            if stop_at is not None:
                x = sampler.predict_x0(model, x, stop_at, inputs.cond)
            else:
                for i in range(first, sampler.num_steps):
                    x = sampler.transition(model, x, i, sampler.action(model, x, i, inputs.cond), draws[i])
            return -inputs.reward(model.decode(x), inputs.cond.prompts).mean().item()

    return loss_at


SAMPLERS = {
    "euler": lambda: EulerSampler(steps=3, guidance_scale=3.0),
    "flow-sde": lambda: FlowSDESampler(steps=3, guidance_scale=3.0, eta=0.7),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("k", [1, 2, 3], ids=["k=1", "k=2", "k=T"])
def test_draft_k_on_flow_matches_central_differences(name, k):
    sampler = SAMPLERS[name]()
    model, params, inputs, state, grads, _ = fd_case(sampler, TruncatedBackprop(k=k, checkpoint=k > 1))
    loss_at = truncated_objective(model, sampler, inputs, state, first=sampler.num_steps - k)
    # Float64 end to end (dt from float32 sigmas is a constant of θ): h = 1e-5 leaves O(h²) ~ 1e-10
    # relative truncation and ~1e-11/h·L rounding, well inside rel = 1e-6.
    assert_central_differences(loss_at, grads, params, directions=2)
    if k == sampler.num_steps:  # DRaFT-K with K = T is DRaFT
        inputs.generator.set_state(state)
        full, _ = grads_of(FullBackprop(), inputs, params)
        torch.testing.assert_close(flat(full), flat(grads), rtol=1e-12, atol=1e-14 * flat(full).abs().max().item())


def velocity(model, x, t, cond, scale):
    """The guided velocity with the transformer called directly (CFG written out)."""

    def v(embeds, pooled):
        return model.transformer(
            hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample

    u = v(cond.uncond.expand(x.shape[0], -1, -1), cond.uncond_pooled.expand(x.shape[0], -1))
    return u + scale * (v(cond.cond, cond.pooled) - u)


def test_refl_on_flow_is_x0_hat_by_hand_and_central_differences():
    sampler = EulerSampler(steps=4, guidance_scale=3.0)
    model, params, inputs, state, grads, out = fd_case(sampler, ReFL(m=3), seed=2)
    t_refl = int(out.logs["refl_t"])
    assert t_refl > 1, "pick a seed that draws t > 1"
    step = sampler.num_steps - t_refl
    assert_central_differences(
        truncated_objective(model, sampler, inputs, state, step, stop_at=step), grads, params, directions=2
    )
    x = trajectory(model, sampler, inputs)[step]
    sched = sampler.scheduler(model)
    x0_hat = x - sched.sigmas[step].double() * velocity(model, x, sched.timesteps[step], inputs.cond, 3.0)
    for p in params:
        p.grad = None
    reward = inputs.reward(model.decode(x0_hat), inputs.cond.prompts)
    torch.testing.assert_close(out.reward, reward.detach(), rtol=1e-12, atol=0)
    (-reward.mean()).backward()
    torch.testing.assert_close(
        flat(grads), flat([p.grad for p in params]), rtol=1e-9, atol=1e-12 * flat(grads).abs().max().item()
    )


@pytest.mark.parametrize("n, split", [(1, False), (2, True)], ids=["n=1-one-graph", "n=2-split-backward"])
def test_draft_lv_on_flow_is_algorithm_1_in_flow_form(n, split):
    """The last Euler step, re-noising x1 = (1 − σ)x0 + σε and x̂0 = x1 − σ·v, all by hand."""
    model, params = flow_with_lora(torch.float64)
    sampler = EulerSampler(steps=3, guidance_scale=3.0)
    reward = LinearReward((1, 3, 8, 8), torch.float64)
    inputs = step_inputs(model, sampler, reward, PROMPTS)
    state = inputs.generator.get_state()
    grads, out = grads_of(LowVariance(n=n), inputs, params, split=split)
    assert out.queries == 1 + n and out.backward_done == split

    last = sampler.num_steps - 1
    sched = sampler.scheduler(model)
    sigma, sigma_end, t = sched.sigmas[last].double(), sched.sigmas[last + 1].double(), sched.timesteps[last]
    for p in params:
        p.grad = None
    x1 = trajectory(model, sampler, inputs)[last]
    x0 = x1 + (sigma_end - sigma) * velocity(model, x1, t, inputs.cond, 3.0)
    total = reward(model.decode(x0), PROMPTS).sum()
    inputs.generator.set_state(state)  # euler draws nothing while sampling: the ε_i come first
    noises = torch.randn((n * len(PROMPTS), *x0.shape[1:]), generator=inputs.generator, dtype=torch.float64)
    for i in range(n):
        x1_i = (1 - sigma) * x0.detach() + sigma * noises[i * len(PROMPTS) : (i + 1) * len(PROMPTS)]
        x0_hat = x1_i - sigma * velocity(model, x1_i, t, inputs.cond, 3.0)
        total = total + reward(model.decode(x0_hat), PROMPTS).sum()
    loss = -total / len(PROMPTS)
    loss.backward()
    torch.testing.assert_close(out.loss, loss.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        flat(grads), flat([p.grad for p in params]), rtol=1e-9, atol=1e-12 * flat(grads).abs().max().item()
    )


def test_kl_on_flow_is_the_squared_velocity_difference_at_the_last_step():
    model, params = flow_with_lora(torch.float64)
    sampler = EulerSampler(steps=3, guidance_scale=3.0)
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 8, 8), torch.float64), PROMPTS)
    state = inputs.generator.get_state()
    plain, _ = grads_of(FullBackprop(), inputs, params)
    inputs.generator.set_state(state)
    beta = 0.05
    wrapped, out = grads_of(KLRegularized(FullBackprop(), beta), inputs, params)
    last = sampler.num_steps - 1
    x, t = trajectory(model, sampler, inputs)[last], sampler.timesteps(model)[last]
    for p in params:
        p.grad = None
    v = velocity(model, x, t, inputs.cond, 1.0)
    with torch.no_grad(), adapters_enabled(model.transformer, False):
        v0 = velocity(model, x, t, inputs.cond, 1.0)
    kl = (v - v0).pow(2).flatten(1).sum(1).mean()
    assert out.logs["kl"] == pytest.approx(kl.item(), rel=1e-9)
    (beta * kl).backward()
    expected = flat([a + p.grad for a, p in zip(plain, params)])
    torch.testing.assert_close(flat(wrapped), expected, rtol=1e-9, atol=1e-12 * expected.abs().max().item())


class EulerChecklist(EstimatorConformance):
    """The estimator checklist on the tiny pixel-space sd3 model sampled with ``euler``."""

    @pytest.fixture(scope="class")
    @classmethod
    def setup(cls):
        return flow_with_lora(torch.float32)

    def make_sampler(self):
        return EulerSampler(steps=self.steps, guidance_scale=3.0)


class TestDraftOnEuler(EulerChecklist):
    def make_estimator(self):
        return FullBackprop()


class TestDraftKOnEuler(EulerChecklist):
    def make_estimator(self):
        return TruncatedBackprop(k=2)

    def make_unsupported_sampler(self):
        return EulerSampler(steps=1)


class TestDraftLVOnEuler(EulerChecklist):
    def make_estimator(self):
        return LowVariance(n=2)


class TestReFLOnEuler(EulerChecklist):
    def make_estimator(self):
        return ReFL(m=2)


class TestKLOnEuler(EulerChecklist):
    def make_estimator(self):
        return KLRegularized(TruncatedBackprop(k=1), 0.5)


class TestAlignPropOnEuler(EulerChecklist):
    def make_estimator(self):
        return TruncatedBackprop(alignprop_range=[0, 3])
