"""diffusion-nft: its loss and gradient against a float64 hand computation (the implicit policies mixed
in x̂0-space) and central differences, the optimality probabilities, sampling by the old policy and its
decay, its refusals and the estimator checklist (tiny pixel-space sd3 model, 3 steps)."""

from __future__ import annotations

import pytest
import torch
from flow_fixtures import flow_with_lora
from model_fixtures import LinearReward, assert_central_differences, step_inputs

from draft_core.errors import ConfigError
from draft_core.lora import adapters_enabled
from draft_core.samplers import DDIMSampler, EulerSampler, FlowSDESampler
from draft_core.testing.estimators import EstimatorConformance
from draft_estimators import DiffusionNFT
from draft_estimators.nft import optimality

PROMPTS = ["a cat", "a dog"]


@pytest.fixture(scope="module")
def case():
    model, params = flow_with_lora(torch.float64)
    return model, params


def set_params(params, values):
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


def hand_loss(model, params, old, sampler, cond, x0, r, levels, beta, kl_weight, clip, fixed_w=None):
    """The loss written out: x̂0± as the affine mixes β·x̂0_θ + (1 − β)·x̂0_old and (1 + β)·x̂0_old − β·x̂0_θ.
    Returns (loss, the weights w± per level); ``fixed_w`` holds the weights at given values (for differences)."""
    sched = sampler.scheduler(model)
    theta = [p.detach().clone() for p in params]
    points = []
    for idx, eps in levels:  # the frozen velocities first: swapping weights in place must precede the graph
        sigma = sched.sigmas[idx].double().view(-1, 1, 1, 1)
        t = sched.timesteps[idx]
        x_t = (1 - sigma) * x0 + sigma * eps
        with torch.no_grad():
            set_params(params, old)
            v_old = model.denoise(x_t, t, cond, 1.0)
            set_params(params, theta)
            with adapters_enabled(model.denoiser, False):
                v_ref = model.denoise(x_t, t, cond, 1.0)
        points.append((sigma, t, x_t, v_old, v_ref))
    total, weights = 0.0, []
    for k, (sigma, t, x_t, v_old, v_ref) in enumerate(points):
        v = model.denoise(x_t, t, cond, 1.0)
        x0_theta, x0_old = x_t - sigma * v, x_t - sigma * v_old
        pos, neg = beta * x0_theta + (1 - beta) * x0_old, (1 + beta) * x0_old - beta * x0_theta
        w_pos = (pos - x0).abs().mean(dim=(1, 2, 3)).detach()
        w_neg = (neg - x0).abs().mean(dim=(1, 2, 3)).detach()
        weights.append((w_pos, w_neg))
        if fixed_w is not None:
            w_pos, w_neg = fixed_w[k]
        fit = (
            r * (pos - x0).pow(2).mean(dim=(1, 2, 3)) / w_pos + (1 - r) * (neg - x0).pow(2).mean(dim=(1, 2, 3)) / w_neg
        )
        total = total + clip * (fit / beta).mean() + kl_weight * (v - v_ref).pow(2).mean()
    return total / len(levels), weights


@pytest.fixture
def moved(case):
    """θ_old = θ moved by a few percent (as after updates): the positive and negative policies differ."""
    model, params = case
    theta = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(3)
    old = [p + 0.1 * p.abs().mean() * torch.randn(p.shape, generator=g, dtype=p.dtype) for p in theta]
    yield model, params, old
    set_params(params, theta)


@pytest.mark.parametrize("checkpoint", [False, True], ids=["plain", "checkpointed"])
def test_loss_and_gradient_are_the_hand_computation(moved, checkpoint):
    model, params, old = moved
    sampler = EulerSampler(steps=3, guidance_scale=3.0)
    estimator = DiffusionNFT(group_size=2, beta=0.7, kl_weight=0.1, checkpoint=checkpoint)
    estimator._bind(model)
    estimator.old = [o.clone() for o in old]
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    r = torch.tensor([0.9, 0.2, 0.55, 0.4], dtype=torch.float64)
    cond = model.encode_prompts(PROMPTS).repeat(2)
    levels = estimator.draw_levels(x0, sampler.num_steps, g)
    assert len(levels) == 2 and all(len(set(idx.tolist())) >= 1 for idx, _ in levels)  # int(0.99·3) = 2 levels

    for p in params:
        p.grad = None
    loss, _ = estimator.loss(model, sampler, cond, x0, r, levels)
    loss.backward()
    grads = [p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None
    hand, weights = hand_loss(model, params, old, sampler, cond, x0, r, levels, 0.7, 0.1, 5.0)
    hand.backward()
    hand_grads = [p.grad.detach().clone() for p in params]
    # float64 throughout, the same operations up to association: agreement to rounding.
    torch.testing.assert_close(loss.detach(), hand.detach(), rtol=1e-10, atol=0)
    scale = max(h.abs().max().item() for h in hand_grads)
    for ours, theirs in zip(grads, hand_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-11 * scale)

    if checkpoint:
        return

    def loss_at():  # the weights w± are stop-gradient: held at their values at θ
        with torch.no_grad():
            return hand_loss(model, params, old, sampler, cond, x0, r, levels, 0.7, 0.1, 5.0, fixed_w=weights)[0].item()

    assert_central_differences(loss_at, grads, params, directions=2)


def test_optimality_is_the_group_advantage_over_the_batch_std_clipped_and_mapped_to_0_1():
    rewards = torch.tensor([1.0, 4.0, 3.0, 0.0, 2.0, 20.0])  # G = 3 copies of B = 2 prompts (row g·B + k)
    grouped = rewards.double().view(3, 2)
    std_all = rewards.double().std(unbiased=False)
    adv = (grouped - grouped.mean(0)) / (std_all + 1e-4)
    expected = (0.5 + adv.clamp(-1.0, 1.0) / 2).flatten()
    r = optimality(rewards, 3, clip=1.0)
    torch.testing.assert_close(r, expected)
    assert r.min() >= 0 and r.max() <= 1 and (r == 1).any()  # the 20 is clipped
    torch.testing.assert_close(r.view(3, 2).mean(0), torch.full((2,), 0.5, dtype=torch.float64), rtol=0, atol=0.2)


def test_the_old_policy_samples_and_follows_its_decay(moved):
    model, params, old = moved
    sampler = FlowSDESampler(steps=3, guidance_scale=1.0)
    reward = LinearReward((1, 3, 8, 8), torch.float64)
    estimator = DiffusionNFT(group_size=2, kl_weight=0.0)
    estimator._bind(model)
    estimator.old = [o.clone() for o in old]
    inputs = step_inputs(model, sampler, reward, PROMPTS)
    state = inputs.generator.get_state()
    out = estimator(inputs)
    # the same call by hand: its pieces, with θ_old's weights for the sampling
    inputs.generator.set_state(state)
    cond, x0, rewards, _ = estimator.sample_batch(inputs)
    theta = [p.detach().clone() for p in params]
    set_params(params, old)
    inputs.generator.set_state(state)
    extra = model.make_noise(2, inputs.generator, dtype=torch.float64)
    with torch.no_grad():
        by_old = sampler.sample(model, cond, torch.cat([inputs.noise, extra]), generator=inputs.generator)
    set_params(params, theta)
    assert torch.equal(x0, by_old)
    torch.testing.assert_close(out.reward, rewards.view(2, 2).mean(0))
    levels = estimator.draw_levels(x0, 3, inputs.generator)
    again, _ = estimator.loss(model, sampler, cond, x0, optimality(rewards, 2, 5.0), levels)
    assert torch.equal(out.loss.detach(), again.detach())
    # decay: θ_old ← d·θ_old + (1 − d)·θ after each applied step, d = min(0.001·k, 0.5)
    estimator.on_optimizer_step(False)
    assert all(torch.equal(o, p) for o, p in zip(estimator.old, old))
    estimator.on_optimizer_step(True)
    for o, before, p in zip(estimator.old, old, params):
        torch.testing.assert_close(o, 0.001 * before + 0.999 * p.detach(), rtol=1e-12, atol=0)
    assert [DiffusionNFT().decay_at(k) for k in (0, 100, 600)] == [0.0, 0.1, 0.5]
    delayed = DiffusionNFT(decay="delayed")
    assert [delayed.decay_at(k) for k in (74, 75, 95, 500)] == [0.0, 0.0, pytest.approx(0.15), 0.999]
    restored = DiffusionNFT()
    restored.load_state_dict(estimator.state_dict())
    assert restored.updates == 1 and all(torch.equal(a, b) for a, b in zip(restored.old, estimator.old))


def test_refusals():
    with pytest.raises(ConfigError, match="needs a flow-matching model and sampler"):
        DiffusionNFT().check(DDIMSampler(steps=3))
    with pytest.raises(ConfigError, match="estimator.decay must be one of linear, delayed"):
        DiffusionNFT(decay="cosine")
    with pytest.raises(ConfigError, match="estimator.beta must be a number > 0"):
        DiffusionNFT(beta=0)


class TestDiffusionNFT(EstimatorConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def setup(cls):
        return flow_with_lora(torch.float32)

    def make_estimator(self):
        return DiffusionNFT(group_size=2)

    def make_sampler(self):
        return EulerSampler(steps=self.steps, guidance_scale=1.0)

    def make_unsupported_sampler(self):
        return DDIMSampler(steps=self.steps, guidance_scale=3.0)
