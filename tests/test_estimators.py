"""Gradient estimators against mathematics: finite differences and the paper's identities."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import LinearReward, assert_central_differences, grads_of, step_inputs, tiny_with_lora

from draft_core.samplers.ddim import DDIMSampler
from draft_estimators import FullBackprop, LowVariance, ReFL, TruncatedBackprop

PROMPTS = ["a cat", "a dog"]


def assert_grads_close(a, b, rtol=1e-5, atol=1e-8):
    flat_a, flat_b = torch.cat([g.flatten() for g in a]), torch.cat([g.flatten() for g in b])
    assert flat_a.abs().max() > 0, "gradient is identically zero"
    torch.testing.assert_close(flat_a, flat_b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("checkpoint", [True, False])
def test_full_draft_gradient_matches_central_differences(checkpoint):
    """Directional derivatives along random directions in LoRA space, float64, h = 1e-5."""
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=3, guidance_scale=3.0)
    reward = LinearReward((1, 3, 64, 64), torch.float64)
    inputs = step_inputs(model, sampler, reward, ["a cat"])
    grads, _ = grads_of(FullBackprop(checkpoint=checkpoint), inputs, params)

    def loss_at():
        with torch.no_grad():
            return FullBackprop()(inputs).loss.item()

    assert_central_differences(loss_at, grads, params)


def test_draft_k_with_k_equal_t_is_full_draft():
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=4)
    reward = LinearReward((1, 3, 64, 64), torch.float64)
    inputs = step_inputs(model, sampler, reward, PROMPTS)
    full, _ = grads_of(FullBackprop(), inputs, params)
    k_eq_t, _ = grads_of(TruncatedBackprop(k=4, checkpoint=False), inputs, params)
    assert_grads_close(full, k_eq_t, rtol=1e-10, atol=1e-14)


def test_truncation_changes_the_gradient():
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=4)
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 64, 64), torch.float64), PROMPTS)
    k1, _ = grads_of(TruncatedBackprop(k=1), inputs, params)
    k2, _ = grads_of(TruncatedBackprop(k=2), inputs, params)
    diff = max((a - b).abs().max().item() for a, b in zip(k1, k2))
    assert diff > 1e-6


def test_refl_with_m_1_is_draft_1():
    # The identity holds when the last DDIM step lands on x̂0, i.e. ᾱ_prev = 1 at the end.
    model, params = tiny_with_lora(torch.float64, {"set_alpha_to_one": True, "steps_offset": 0})
    sampler = DDIMSampler(steps=5)
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 64, 64), torch.float64), PROMPTS)
    refl, out = grads_of(ReFL(m=1), inputs, params)
    draft1, _ = grads_of(TruncatedBackprop(k=1), inputs, params)
    assert out.logs["refl_t"] == 1.0
    assert_grads_close(refl, draft1, rtol=1e-9, atol=1e-13)


def test_refl_stops_early_at_a_step_within_m():
    model, params = tiny_with_lora()
    sampler = DDIMSampler(steps=10)
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 64, 64)), PROMPTS)
    seen = {int(ReFL(m=4)(inputs).logs["refl_t"]) for _ in range(20)}
    assert seen <= {1, 2, 3, 4} and len(seen) > 1


def test_draft_lv_with_n_0_is_draft_1():
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=4)
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 64, 64), torch.float64), PROMPTS)
    lv0, _ = grads_of(LowVariance(n=0), inputs, params)
    draft1, _ = grads_of(TruncatedBackprop(k=1), inputs, params)
    assert_grads_close(lv0, draft1, rtol=1e-12, atol=1e-15)


def test_draft_lv_follows_algorithm_1():
    """DRaFT-LV's gradient = ∇r(x0) + Σ_i ∇r(x̂0_i), x̂0_i denoised from α1·sg(x0) + σ1·ε_i."""
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=4)
    reward = LinearReward((1, 3, 64, 64), torch.float64)
    inputs = step_inputs(model, sampler, reward, PROMPTS)
    state = inputs.generator.get_state()
    lv, out = grads_of(LowVariance(n=2), inputs, params)
    assert out.queries == 3

    # Independent computation from the scheduler's own α/σ.
    inputs.generator.set_state(state)
    sched = sampler.scheduler(model)
    t = sched.timesteps[-1]
    abar = sched.alphas_cumprod[t].to(torch.float64)
    for p in params:
        p.grad = None
    x0 = sampler.sample(model, inputs.cond, inputs.noise, grad_from=3)
    total = reward(model.decode(x0), PROMPTS).sum()
    eps = torch.randn((4, *x0.shape[1:]), generator=inputs.generator, dtype=torch.float64)
    for i in range(2):
        x1 = abar.sqrt() * x0.detach() + (1 - abar).sqrt() * eps[2 * i : 2 * i + 2]
        x0_hat = sampler.predict_x0(model, x1, 3, inputs.cond)
        total = total + reward(model.decode(x0_hat), PROMPTS).sum()
    (-total / 2).backward()
    manual = [p.grad.clone() for p in params]
    assert_grads_close(lv, manual, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "estimator",
    [FullBackprop(), TruncatedBackprop(k=2), LowVariance(n=2), ReFL(m=2)],
    ids=["draft", "draft-k", "draft-lv", "refl"],
)
def test_gradients_flow_only_into_lora(estimator):
    model, params = tiny_with_lora()
    sampler = DDIMSampler(steps=3)
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 64, 64)), PROMPTS)
    estimator(inputs).loss.backward()
    lora_ids = {id(p) for p in params}
    for module in model.modules():
        for name, p in module.named_parameters():
            if id(p) in lora_ids:
                continue
            assert not p.requires_grad and p.grad is None, name
    # Every LoRA factor in the UNet receives gradient (both factors are random here).
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in params) == len(params)


def test_bad_k_and_m_are_clear_errors():
    from draft_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"estimator.k must be a positive integer.*got 0"):
        TruncatedBackprop(k=0)
    with pytest.raises(ConfigError, match="exceeds sampler.steps=3"):
        TruncatedBackprop(k=5).check(DDIMSampler(steps=3))
    with pytest.raises(ConfigError, match="m=30"):
        ReFL(m=30).check(DDIMSampler(steps=20))
    with pytest.raises(ConfigError, match=r"estimator.n must be a non-negative integer, got -1"):
        LowVariance(n=-1)


def test_random_truncation_draws_k_in_range_and_matches_fixed_k():
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=4)
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 64, 64), torch.float64), PROMPTS)
    est = TruncatedBackprop(k_range=[2, 3])
    state = inputs.generator.get_state()
    drawn = []
    for _ in range(12):
        grads, out = grads_of(est, inputs, params)
        drawn.append(int(out.logs["k"]))
    assert set(drawn) == {2, 3}
    # Each draw's gradient is exactly the fixed-K gradient for the K drawn.
    inputs.generator.set_state(state)
    grads, out = grads_of(est, inputs, params)
    fixed, _ = grads_of(TruncatedBackprop(k=int(out.logs["k"])), inputs, params)
    assert_grads_close(grads, fixed, rtol=1e-12, atol=1e-15)


def test_bad_k_range_is_a_clear_error():
    from draft_core.errors import ConfigError

    for bad in ([3, 2], [0, 2], [1], "1:2"):
        with pytest.raises(ConfigError, match="k_range must be"):
            TruncatedBackprop(k_range=bad)
    with pytest.raises(ConfigError, match="k_range=\\[1, 9\\] exceeds sampler.steps=5"):
        TruncatedBackprop(k_range=[1, 9]).check(DDIMSampler(steps=5))


def test_kl_is_configured_on_any_estimator():
    from draft_core.config import load_config
    from draft_core.errors import ConfigError
    from draft_core.training.components import build_components
    from draft_estimators.kl import KLRegularized

    c = build_components(load_config(overrides=["estimator.name=refl", "estimator.kl=0.1", "sampler.steps=20"]))
    assert isinstance(c.estimator, KLRegularized) and isinstance(c.estimator.inner, ReFL) and c.estimator.beta == 0.1
    with pytest.raises(ConfigError, match="estimator.kl must be a number >= 0"):
        build_components(load_config(overrides=["estimator.kl=-1"]))


def test_kl_is_resolved_by_name_through_the_registry():
    """The core knows the KL wrapper only as the registered name ``kl``; naming it as the estimator is an error."""
    from draft_core.config import load_config
    from draft_core.errors import ConfigError
    from draft_core.training.components import build_components

    c = build_components(
        load_config(overrides=["estimator.name=draft-k", "estimator.kl={beta: 0.5}", "sampler.steps=20"])
    )
    assert type(c.estimator).__name__ == "KLRegularized" and c.estimator.beta == 0.5
    with pytest.raises(ConfigError, match="wraps another estimator"):
        build_components(load_config(overrides=["estimator.name=kl"]))
