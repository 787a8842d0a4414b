"""The estimators against mathematics written out here: float64 finite differences for DRaFT-K
and ReFL at t > 1, DRaFT-LV against x̂0 by hand, the learned negative prompt's gradient, and
the paper's KL term composed with every built-in estimator."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import (
    LinearReward,
    PooledLinearReward,
    assert_central_differences,
    grads_of,
    guided_eps,
    step_inputs,
    tiny_with_lora,
)

from draft_core.lora import adapters_enabled
from draft_core.samplers import DDPMSampler
from draft_core.samplers.ddim import DDIMSampler
from draft_core.training.learned_sampling import LearnedSampling, NegativePrompt
from draft_estimators import (
    DeterministicPolicyGradient,
    DirectAlign,
    DRTune,
    FullBackprop,
    LowVariance,
    ReFL,
    TruncatedBackprop,
)
from draft_estimators.kl import KLRegularized

PROMPTS = ["a cat", "a dog"]


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


def assert_close_to_max(a, b, rel):
    """Entry-wise agreement to ``rel`` of the largest entry (for float64 paths that pass
    through diffusers' float32 ᾱ: square roots taken in float32 differ by ~1e-8 relative)."""
    a, b = flat(a), flat(b)
    assert a.abs().max() > 0
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * a.abs().max().item())


def _fd_case(sampler, estimator, seed=0):
    model, params = tiny_with_lora(torch.float64)
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 64, 64), torch.float64), ["a cat"], seed=seed)
    state = inputs.generator.get_state()
    grads, out = grads_of(estimator, inputs, params)
    return model, params, inputs, state, grads, out


def _truncated_objective(model, sampler, inputs, state, first, last_step=None):
    """L(θ) = −r(x0) where the steps before ``first`` are held at the current θ (their output
    x_first computed once: the stop-gradient) and the later ones follow θ; with ``last_step``,
    x0 is instead the one-step prediction from x_first (ReFL). Draws the same step noise
    as the sampler (the generator restarted at ``state``)."""
    trace = []
    inputs.generator.set_state(state)
    with torch.no_grad():
        sampler.sample(model, inputs.cond, inputs.noise, trace=trace, generator=inputs.generator)
    x_first = trace[first][1]
    T = sampler.num_steps

    def loss_at():
        inputs.generator.set_state(state)
        draws = [sampler.draw_step_noise(x_first, inputs.generator) for _ in range(T)]
        x = x_first
        with torch.no_grad():
            if last_step is not None:
                x = sampler.predict_x0(model, x, last_step, inputs.cond)
            else:
                for i in range(first, T):
                    x = sampler.transition(model, x, i, sampler.action(model, x, i, inputs.cond), draws[i])
            return -inputs.reward(model.decode(x), inputs.cond.prompts).mean().item()

    return loss_at


@pytest.mark.parametrize("sampler_class", [DDIMSampler, DDPMSampler])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_draft_k_matches_central_differences(sampler_class, k):
    """DRaFT-K's gradient is that of r(last K steps from stop_grad(x_K)) (Algorithm 1)."""
    sampler = sampler_class(steps=4, guidance_scale=3.0)
    model, params, inputs, state, grads, _ = _fd_case(sampler, TruncatedBackprop(k=k, checkpoint=k > 1))
    loss_at = _truncated_objective(model, sampler, inputs, state, first=sampler.num_steps - k)
    # The derivative can be 1e-5 of the loss (DDPM, K = 1): h = 3e-5 balances float64
    # rounding in the difference (~1e-16·L/h) against the O(h²) truncation error.
    assert_central_differences(loss_at, grads, params, directions=1, h=3e-5, rel=1e-5)


def _input_of_step(model, sampler, inputs, step, params):
    """The trajectory's input to sampling step ``step`` (no grad); the parameters' gradients cleared."""
    trace = []
    with torch.no_grad():
        sampler.sample(model, inputs.cond, inputs.noise, trace=trace)
    for p in params:
        p.grad = None
    return trace[step][1]


def _alphas(sampler, model, step):
    """ᾱ at sampling step ``step`` and at the step after it (the final ᾱ after the last), float64."""
    sched = sampler.scheduler(model)
    ac = sched.alphas_cumprod.to(torch.float64)
    t = int(sched.timesteps[step])
    prev = t - sched.config.num_train_timesteps // sampler.num_steps
    return t, ac[t], (ac[prev] if prev >= 0 else sched.final_alpha_cumprod.to(torch.float64))


def test_refl_at_t_above_1_matches_central_differences_and_x0_by_hand():
    sampler = DDIMSampler(steps=5, guidance_scale=3.0)
    model, params, inputs, state, grads, out = _fd_case(sampler, ReFL(m=4), seed=1)
    t_refl = int(out.logs["refl_t"])
    assert t_refl > 1, "pick a seed that draws t > 1"
    step = sampler.num_steps - t_refl
    loss_at = _truncated_objective(model, sampler, inputs, state, first=step, last_step=step)
    assert_central_differences(loss_at, grads, params, directions=2)

    # x̂0 = (x_t − √(1−ᾱ_t) ε̃) / √ᾱ_t at step T − t, from the trajectory's input to that step.
    x = _input_of_step(model, sampler, inputs, step, params)
    t, abar, _ = _alphas(sampler, model, step)
    eps = guided_eps(model, x, t, inputs.cond, sampler.guidance_scale)
    x0_hat = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    reward = inputs.reward(model.decode(x0_hat), PROMPTS[:1])
    torch.testing.assert_close(out.reward, reward.detach(), rtol=1e-6, atol=0)
    (-reward.mean()).backward()
    assert_close_to_max(grads, [p.grad for p in params], 1e-5)


@pytest.mark.parametrize("n, split", [(1, False), (3, True)], ids=["n=1-one-graph", "n=3-split-backward"])
def test_draft_lv_matches_algorithm_1_written_out(n, split):
    """The last DDIM step, the re-noising and the one-step denoising, all by hand."""
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=4, guidance_scale=3.0)
    reward = LinearReward((1, 3, 64, 64), torch.float64)
    inputs = step_inputs(model, sampler, reward, PROMPTS)
    state = inputs.generator.get_state()
    grads, out = grads_of(LowVariance(n=n), inputs, params, split=split)
    assert out.queries == 1 + n and out.backward_done == split

    last = sampler.num_steps - 1
    x1 = _input_of_step(model, sampler, inputs, last, params)
    t, abar, abar_end = _alphas(sampler, model, last)
    eps = guided_eps(model, x1, t, inputs.cond, sampler.guidance_scale)
    x0 = abar_end.sqrt() * (x1 - (1 - abar).sqrt() * eps) / abar.sqrt() + (1 - abar_end).sqrt() * eps
    total = reward(model.decode(x0), PROMPTS).sum()
    inputs.generator.set_state(state)  # DDIM (eta 0) draws nothing while sampling: the ε_i come first
    noises = torch.randn((n * len(PROMPTS), *x0.shape[1:]), generator=inputs.generator, dtype=torch.float64)
    for i in range(n):
        x1_i = abar.sqrt() * x0.detach() + (1 - abar).sqrt() * noises[i * len(PROMPTS) : (i + 1) * len(PROMPTS)]
        eps_i = guided_eps(model, x1_i, t, inputs.cond, sampler.guidance_scale)
        x0_hat = (x1_i - (1 - abar).sqrt() * eps_i) / abar.sqrt()
        total = total + reward(model.decode(x0_hat), PROMPTS).sum()
    loss = -total / len(PROMPTS)
    loss.backward()
    torch.testing.assert_close(out.loss, loss.detach(), rtol=1e-6, atol=0)
    assert_close_to_max(grads, [p.grad for p in params], 1e-5)


def test_learned_negative_prompt_gradient_matches_central_differences():
    model, lora = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=3, guidance_scale=3.0)
    learned = LearnedSampling(negative=NegativePrompt(32, heads=4).double())
    with torch.no_grad():  # off its zero start, so that every layer of it gets gradient
        learned.negative.mlp[2].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 64, 64), torch.float64), ["a cat"])
    base = inputs.cond
    params = list(learned.negative.parameters())

    def loss():
        inputs.cond = learned.condition(base)
        return FullBackprop(checkpoint=True)(inputs).loss

    loss().backward()
    grads = [p.grad.clone() for p in params]
    assert all(g.abs().sum() > 0 for g in grads[-2:])  # the MLP's last layer
    with torch.no_grad():
        assert_central_differences(lambda: loss().item(), grads, params, directions=2, rel=1e-5)


ESTIMATORS = {
    "draft": lambda: FullBackprop(),
    "draft-k": lambda: TruncatedBackprop(k=2),
    "draft-lv": lambda: LowVariance(n=1),
    "refl": lambda: ReFL(m=2),
    "dpg": lambda: DeterministicPolicyGradient(states=1, critic_rank=2),
    "alignprop": lambda: TruncatedBackprop(alignprop_range=[0, 3]),
    "direct-align": lambda: DirectAlign(),
    "drtune": lambda: DRTune(k=2),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_kl_composes_with_every_builtin_estimator(name):
    """gradient(KL-wrapped) = gradient(estimator) + β ∇ (1/B) Σ_b ‖ε_θ − ε_pre‖², at the last step
    the estimator's sampling ran; also when the estimator runs its own backward passes."""
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=3, guidance_scale=3.0)
    inputs = step_inputs(model, sampler, PooledLinearReward(), PROMPTS)
    estimator, beta = ESTIMATORS[name](), 0.05
    state = inputs.generator.get_state()
    for split in (False, True) if name in ("draft-lv", "dpg") else (False,):  # the two that split their backward
        inputs.generator.set_state(state)
        plain, _ = grads_of(estimator, inputs, params, split=split)
        inputs.generator.set_state(state)
        wrapped, out = grads_of(KLRegularized(estimator, beta), inputs, params, split=split)

        step = sampler.num_steps - int(out.logs.get("refl_t", 1))  # ReFL stops early; the others run to the end
        x, t = _input_of_step(model, sampler, inputs, step, params), sampler.timesteps(model)[step]
        eps = model.unet(x, t, encoder_hidden_states=inputs.cond.cond).sample
        with torch.no_grad(), adapters_enabled(model.unet, False):
            eps0 = model.unet(x, t, encoder_hidden_states=inputs.cond.cond).sample
        kl = sum(torch.linalg.vector_norm(eps[b] - eps0[b]) ** 2 for b in range(len(PROMPTS))) / len(PROMPTS)
        assert out.logs["kl"] == pytest.approx(kl.item(), rel=1e-9)
        (beta * kl).backward()
        expected = [a + p.grad for a, p in zip(plain, params)]
        torch.testing.assert_close(
            flat(wrapped), flat(expected), rtol=1e-9, atol=1e-12 * flat(expected).abs().max().item()
        )
