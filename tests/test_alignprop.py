"""AlignProp's random truncation (``draft-k`` with ``alignprop_range``): a cutoff per sampling step,
the noise prediction of the steps before it detached, the latents never."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import LinearReward, assert_central_differences, grads_of, guided_eps, step_inputs, tiny_with_lora

from draft_core.errors import ConfigError
from draft_core.samplers.ddim import DDIMSampler
from draft_estimators import FullBackprop, TruncatedBackprop
from draft_estimators.alignprop import draw_kept


def test_cutoff_0_keeps_every_step_and_is_full_draft():
    model, params = tiny_with_lora(torch.float64)
    inputs = step_inputs(
        model, DDIMSampler(steps=3, guidance_scale=3.0), LinearReward((1, 3, 64, 64), torch.float64), ["a cat"]
    )
    ours, out = grads_of(TruncatedBackprop(alignprop_range=[0, 0]), inputs, params)
    full, _ = grads_of(FullBackprop(), inputs, params)
    assert out.logs["kept_steps"] == 3.0
    flat_a, flat_b = torch.cat([g.flatten() for g in ours]), torch.cat([g.flatten() for g in full])
    assert flat_b.abs().max() > 0
    torch.testing.assert_close(flat_a, flat_b, rtol=1e-10, atol=1e-14 * flat_b.abs().max().item())


def _ddim_by_hand(model, sampler, x, step, eps):
    """One DDIM (eta 0) step from the scheduler's ᾱ, epsilon prediction."""
    sched = sampler.scheduler(model)
    ac = sched.alphas_cumprod.to(torch.float64)
    t = int(sched.timesteps[step])
    prev = t - sched.config.num_train_timesteps // sampler.num_steps
    a_t, a_prev = ac[t], (ac[prev] if prev >= 0 else sched.final_alpha_cumprod.to(torch.float64))
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def test_gradient_is_that_of_the_chain_with_the_detached_predictions_held_fixed(monkeypatch):
    """With steps 0 and 2 detached (a non-contiguous pattern), the gradient is the derivative of
    r(x0(θ)) where those steps' ε are constants (their values at θ) and the latents carry on."""
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=4, guidance_scale=3.0)
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 64, 64), torch.float64), ["a cat"])
    kept = [False, True, False, True]
    monkeypatch.setattr("draft_estimators.truncated.draw_kept", lambda lo, hi, steps, gen: kept)
    grads, out = grads_of(TruncatedBackprop(alignprop_range=[0, 4]), inputs, params)
    assert out.logs["kept_steps"] == 2.0

    timesteps = sampler.timesteps(model)
    fixed = {}
    with torch.no_grad():  # the detached steps' ε at the current θ
        x = inputs.noise
        for i in range(4):
            eps = guided_eps(model, x, timesteps[i], inputs.cond, sampler.guidance_scale)
            fixed[i] = eps
            x = _ddim_by_hand(model, sampler, x, i, eps)

    def loss_at():
        with torch.no_grad():
            x = inputs.noise
            for i in range(4):
                eps = guided_eps(model, x, timesteps[i], inputs.cond, sampler.guidance_scale) if kept[i] else fixed[i]
                x = _ddim_by_hand(model, sampler, x, i, eps)
            return -inputs.reward(model.decode(x), ["a cat"]).mean().item()

    # diffusers takes ᾱ's square roots in float32: the hand-written chain agrees to ~1e-8 relative.
    assert loss_at() == pytest.approx(out.loss.item(), rel=1e-7)
    assert_central_differences(loss_at, grads, params, directions=2, rel=1e-5)


def test_the_cutoff_is_redrawn_at_every_sampling_step():
    """Step i keeps its gradient with probability P(c <= i) = (i − lo + 1)/(hi − lo + 1), each step
    on its own draw: patterns with a detached step after a kept one occur."""
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([draw_kept(1, 4, 5, gen) for _ in range(4000)], dtype=torch.float64)
    expected = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    # 4000 Bernoulli draws: standard error <= 0.008, so 0.03 is about 4 standard errors.
    torch.testing.assert_close(draws.mean(0), expected, rtol=0, atol=0.03)
    non_contiguous = ((draws[:, 1:-1] == 1) & (draws[:, 2:] == 0)).any(1).double().mean()
    assert non_contiguous > 0.2  # the last steps are not a contiguous tail, unlike k_range


def test_bad_alignprop_ranges_are_clear_errors():
    for bad in ([2, 1], [-1, 2], [1], "0:3", [True, 2]):
        with pytest.raises(ConfigError, match="alignprop_range must be"):
            TruncatedBackprop(alignprop_range=bad)
    with pytest.raises(ConfigError, match=r"alignprop_range=\[0, 9\] does not fit sampler.steps=5"):
        TruncatedBackprop(alignprop_range=[0, 9]).check(DDIMSampler(steps=5))
    with pytest.raises(ConfigError, match="detaches every step"):
        TruncatedBackprop(alignprop_range=[5, 5]).check(DDIMSampler(steps=5))
    with pytest.raises(ConfigError, match="give one"):
        TruncatedBackprop(k_range=[1, 2], alignprop_range=[0, 2])
    TruncatedBackprop(alignprop_range=[0, 5]).check(DDIMSampler(steps=5))  # cutoffs up to T, as AlignProp's (0, 50)
