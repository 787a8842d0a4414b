"""direct-align (SRPO's Direct-Align) against mathematics: float64 central differences of the loss
written out with the flow and DDIM formulas, the recovery as an interpolation between x̂0_θ and the
finished sample, recovery from the sampler's own last state = ReFL's one-step prediction (and DRaFT-1
on euler), the semantic relative preference by hand, bad input, and the estimator checklist on both
families."""

from __future__ import annotations

import pytest
import torch
from flow_fixtures import flow_with_lora
from model_fixtures import LinearReward, assert_central_differences, grads_of, step_inputs, tiny_with_lora

from draft_core.errors import ConfigError
from draft_core.samplers import EulerSampler
from draft_core.samplers.ddim import DDIMSampler
from draft_core.testing.estimators import EstimatorConformance
from draft_estimators import DirectAlign, ReFL, TruncatedBackprop
from draft_estimators.direct_align import noise_level, recover


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


def flow_case(prompts=("a cat",)):
    model, params = flow_with_lora(torch.float64)
    sampler = EulerSampler(steps=4, guidance_scale=3.0)
    return model, params, sampler, step_inputs(model, sampler, LinearReward((1, 3, 8, 8), torch.float64), list(prompts))


def ddim_case():
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=4, guidance_scale=3.0)
    return model, params, sampler, step_inputs(model, sampler, LinearReward((1, 3, 64, 64), torch.float64), ["a cat"])


def levels_by_hand(model, sampler, step):
    """(a, s) of a sampler level from the scheduler itself: flow σ, or DDIM's ᾱ at the step's timestep."""
    sched = sampler.scheduler(model)
    if sampler.flow_matching:
        sigma = sched.sigmas[step].double()
        return 1 - sigma, sigma
    abar = sched.alphas_cumprod.double()[int(sched.timesteps[step])]
    return abar.sqrt(), (1 - abar).sqrt()


@pytest.mark.parametrize("family", ["flow", "ddim"])
def test_direct_align_matches_central_differences_of_the_method_written_out(family):
    """L(θ) = −d·r(x̂0): x_i = a_i·x0 + s_i·ε with x0 the finished sample (held fixed), the flow step
    x_j = x_i + (σ_j − σ_i)·v_θ (DDIM: x_j = a_j·x̂0_θ + s_j·ε̂_θ), x̂0 = (x_j − s_j·ε)/a_j."""
    model, params, sampler, inputs = flow_case() if family == "flow" else ddim_case()
    estimator = DirectAlign(inject_range=[0.25, 0.5], discount=[2.0, 0.5])
    state = inputs.generator.get_state()
    grads, out = grads_of(estimator, inputs, params)
    i = int(out.logs["inject_step"])
    j = i + 1
    assert i in (1, 2) and out.logs["discount"] == pytest.approx(2.0 + (0.5 - 2.0) * (i / 4 - 0.25) / 0.25)
    inputs.generator.set_state(state)
    torch.randint(2, (1,), generator=inputs.generator)  # the injection step's draw
    with torch.no_grad():
        x0 = sampler.sample(model, inputs.cond, inputs.noise, generator=inputs.generator)
    eps = inputs.noise
    (a_i, s_i), (a_j, s_j) = levels_by_hand(model, sampler, i), levels_by_hand(model, sampler, j)

    def loss_at():
        with torch.no_grad():
            x_i = a_i * x0 + s_i * eps
            out_i = sampler.action(model, x_i, i, inputs.cond)
            if family == "flow":
                x_j = x_i + (s_j - s_i) * out_i
            else:
                x0_theta = (x_i - s_i * out_i) / a_i
                x_j = a_j * x0_theta + s_j * out_i
            x0_hat = (x_j - s_j * eps) / a_j
            return -out.logs["discount"] * inputs.reward(model.decode(x0_hat), inputs.cond.prompts).mean().item()

    assert -out.loss.item() / out.logs["discount"] == pytest.approx(out.reward.item(), rel=1e-12)
    # DDIM's ᾱ are float32 in diffusers, whose add_noise (which the estimator reads the levels from) takes
    # their square roots in float32 (~1e-8 relative); the flow's σ are the same float32 numbers on both sides.
    assert loss_at() == pytest.approx(out.loss.item(), rel=1e-10 if family == "flow" else 1e-7)
    # h = 3e-5 and rel 1e-5 leave room for that rounding (as tests/test_estimators_exact.py does for DDPM).
    assert_central_differences(loss_at, grads, params, directions=2, h=3e-5, rel=1e-5)


@pytest.mark.parametrize("family", ["flow", "ddim"])
@pytest.mark.parametrize("jump", [1, 2])
def test_recovery_interpolates_between_the_prediction_and_the_finished_sample(family, jump):
    """x̂0 = (1 − λ)·x̂0_θ + λ·x0, λ = (s_j/a_j)/(s_i/a_i): the gradient is (1 − λ) times ReFL's at x_i."""
    model, _, sampler, inputs = flow_case() if family == "flow" else ddim_case()
    x0 = torch.randn(inputs.noise.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    i = 1
    with torch.no_grad():
        x_i = sampler.add_noise(model, x0, inputs.noise, i)
        x0_hat = recover(sampler, model, x_i, inputs.noise, i, i + jump, inputs.cond)
        x0_theta = sampler.predict_x0(model, x_i, i, inputs.cond)
    (a_i, s_i), (a_j, s_j) = noise_level(sampler, model, i, x0), noise_level(sampler, model, i + jump, x0)
    lam = (s_j / a_j) / (s_i / a_i)
    assert 0 < lam < 1
    if jump == 1:  # the estimator logs the same λ for its injection step
        estimator = DirectAlign(inject_range=[i / sampler.num_steps] * 2)
        assert estimator(inputs).logs["lambda"] == pytest.approx(lam.item(), rel=1e-12)
    torch.testing.assert_close(x0_hat, (1 - lam) * x0_theta + lam * x0, rtol=1e-10, atol=1e-10)
    for step in (i, i + jump):  # the levels the estimator reads from add_noise are the scheduler's
        by_hand = levels_by_hand(model, sampler, step)
        torch.testing.assert_close(
            torch.stack(noise_level(sampler, model, step, x0)), torch.stack(by_hand), rtol=1e-7, atol=0
        )


@pytest.mark.parametrize("family", ["flow", "ddim"])
def test_recovery_from_the_samplers_last_state_is_refl_at_t_1(family):
    """From the chain's own state at its last step, recovering to the clean end is ReFL's x̂0 at t = 1
    whatever the injected noise, so the gradients agree; on euler that is also DRaFT-1's."""
    model, params, sampler, inputs = flow_case() if family == "flow" else ddim_case()
    last = sampler.num_steps - 1
    state = inputs.generator.get_state()
    refl, out = grads_of(ReFL(m=1), inputs, params)
    trace = []
    with torch.no_grad():
        sampler.sample(model, inputs.cond, inputs.noise, trace=trace)
    for p in params:
        p.grad = None
    other_noise = torch.randn(inputs.noise.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x0_hat = recover(sampler, model, trace[last][1], other_noise, last, last + 1, inputs.cond)
    reward = inputs.reward(model.decode(x0_hat), inputs.cond.prompts)
    torch.testing.assert_close(reward.detach(), out.reward, rtol=1e-12, atol=0)
    (-reward.mean()).backward()
    mine = flat([p.grad for p in params])
    torch.testing.assert_close(mine, flat(refl), rtol=1e-9, atol=1e-12 * mine.abs().max().item())
    if family == "flow":
        inputs.generator.set_state(state)
        draft1, _ = grads_of(TruncatedBackprop(k=1), inputs, params)
        torch.testing.assert_close(mine, flat(draft1), rtol=1e-9, atol=1e-12 * mine.abs().max().item())


class PromptLinearReward(LinearReward):
    """<images, W>·(1 + len(prompt)/100): a reward that reads its prompts."""

    uses_prompts = True

    def __call__(self, images, prompts):
        scale = torch.tensor([1 + len(p) / 100 for p in prompts], dtype=images.dtype)
        return super().__call__(images, prompts) * scale


def test_semantic_relative_preference_is_the_two_prompt_difference():
    model, params, sampler, inputs = flow_case(prompts=("a cat", "a dog"))
    inputs.reward = PromptLinearReward((1, 3, 8, 8), torch.float64)
    estimator = DirectAlign(
        inject_range=[0.25, 0.5], positive=["Realistic photo", "Detailed"], negative="Painting", srp_k=[0.3, 0.1]
    )
    state = inputs.generator.get_state()
    out = estimator(inputs)
    assert out.queries == 2
    k = out.logs["srp_k"]
    assert k == pytest.approx(0.3 + (0.1 - 0.3) * (out.logs["inject_step"] / 4 - 0.25) / 0.25)
    inputs.generator.set_state(state)
    i = int(torch.randint(2, (1,), generator=inputs.generator).item()) + 1
    with torch.no_grad():
        x0 = sampler.sample(model, inputs.cond, inputs.noise, generator=inputs.generator)
    pos = ["Realistic photo", "Detailed"][int(torch.randint(2, (1,), generator=inputs.generator).item())]
    torch.randint(1, (1,), generator=inputs.generator)
    x_i = sampler.add_noise(model, x0, inputs.noise, i)
    images = model.decode(recover(sampler, model, x_i, inputs.noise, i, i + 1, inputs.cond))
    r_pos = inputs.reward(images, [f"{pos}. a cat", f"{pos}. a dog"])
    r_neg = inputs.reward(images, ["Painting. a cat", "Painting. a dog"])
    torch.testing.assert_close(out.reward, ((1 + k) * r_pos - r_neg).detach(), rtol=1e-12, atol=0)
    assert out.logs["reward_positive"] == pytest.approx(r_pos.mean().item(), rel=1e-12)


def test_bad_settings_are_refused_with_one_paragraph():
    with pytest.raises(ConfigError, match="positive and estimator.negative"):
        DirectAlign(positive="Real")
    with pytest.raises(ConfigError, match="inject_range"):
        DirectAlign(inject_range=[0.6, 0.2])
    with pytest.raises(ConfigError, match="jump"):
        DirectAlign(jump=0)
    with pytest.raises(ConfigError, match="leaves no injection step"):
        DirectAlign(inject_range=[0.9, 1.0], jump=2).check(EulerSampler(steps=4))
    model, params, sampler, inputs = flow_case()
    with pytest.raises(ConfigError, match="does not read prompts"):
        DirectAlign(positive="Real", negative="Painting")(inputs)


class TestDirectAlign(EstimatorConformance):
    def make_estimator(self):
        return DirectAlign()

    def make_unsupported_sampler(self):
        return DDIMSampler(steps=1)  # no step in [0.1, 0.5] of the chain


class TestDirectAlignOnAFlowFamily(EstimatorConformance):
    def make_model(self):
        from flow_fixtures import tiny_pixel_flow

        return tiny_pixel_flow()

    def make_sampler(self):
        return EulerSampler(steps=self.steps, guidance_scale=3.0)

    def make_estimator(self):
        return DirectAlign(inject_range=[0.0, 1.0], jump=2)
