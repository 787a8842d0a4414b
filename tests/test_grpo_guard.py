"""GRPO-Guard (``grpo`` with ``guard: true``): its loss and gradient against a float64 hand computation
from torch.distributions.Normal (ratio (log ρ + b)·s with b per sample, the 1/|dt| weight), against
central differences, the difference from the reference code's batch-wide b, and its refusals."""

from __future__ import annotations

import pytest
import torch
from flow_fixtures import flow_with_lora
from model_fixtures import LinearReward, assert_central_differences, grads_of, step_inputs

from draft_core.errors import ConfigError
from draft_core.models.conditioning import conditioning_keys
from draft_core.plugins.protocols import Conditioning
from draft_core.samplers import DDIMSampler, FlowSDESampler
from draft_core.testing.estimators import EstimatorConformance
from draft_estimators import GRPO

PROMPTS = ["a cat", "a dog"]


def hand_loss(model, sampler, buf, idx, steps, clip_range, batch_wide_b=False):
    """The guard's loss from the Gaussians written out: log ρ from Normal densities, b = mean_e(Δμ²)/(2s²)."""
    cond = Conditioning.from_tensors({k: buf[k] for k in conditioning_keys(buf)}).select(idx)
    adv, sigmas = buf["advantages"][idx], sampler.scheduler(model).sigmas.double()
    total = 0.0
    for j in steps:
        x_t, x_next, mu_old = buf["latents"][j][idx], buf["latents"][j + 1][idx], buf["means"][j][idx]
        mu, s = sampler.transition_distribution(model, x_t, j, cond)
        log_p = torch.distributions.Normal(mu, s).log_prob(x_next).flatten(1).mean(1)
        log_p_old = torch.distributions.Normal(mu_old, s).log_prob(x_next).flatten(1).mean(1)
        torch.testing.assert_close(log_p_old, buf["log_probs"][j][idx], rtol=1e-12, atol=1e-12)  # stored at sampling
        b = (mu - mu_old).pow(2).flatten(1).mean(1) / (2 * s**2)
        if batch_wide_b:  # the reference code's b: one number for the batch
            b = b.mean().expand_as(b)
        ratio = torch.exp((log_p - log_p_old + b) * s)
        surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()
        total = total + surrogate / (sigmas[j] - sigmas[j + 1])
    return total / len(steps)


def moved_policy_case(clip_range):
    """A sampled batch (call 1, on-policy), then the LoRA moved as an update would, then call 2's loss."""
    model, params = flow_with_lora(torch.float64)
    sampler = FlowSDESampler(steps=3, guidance_scale=3.0, eta=0.7)
    estimator = GRPO(group_size=2, guard=True, inner_epochs=2, clip_range=clip_range, checkpoint=False)
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 8, 8), torch.float64), PROMPTS)
    first = estimator(inputs)
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        for p in params:
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=g, dtype=p.dtype))
    buf = estimator.buffer
    idx, steps = buf["perms"][1], buf["order"][1].tolist()
    grads, out = grads_of(estimator, inputs, params)
    return model, params, sampler, estimator, buf, idx, steps, first, grads, out


def test_loss_and_gradient_are_the_hand_computation_with_b_per_sample():
    clip_range = 1e-4  # log ρ̃ is ~1e-6 to 3e-4 here: some steps' samples are clipped, others not
    model, params, sampler, estimator, buf, idx, steps, first, grads, out = moved_policy_case(clip_range)
    # On-policy (call 1): μ_θ = μ_old, so ρ̃ = 1 and the loss is −mean A, each step weighted by 1/|dt|.
    sigmas = sampler.scheduler(model).sigmas.double()
    first_steps = buf["order"][0].tolist()
    weights = torch.stack([1 / (sigmas[j] - sigmas[j + 1]) for j in first_steps]).mean()
    torch.testing.assert_close(first.loss.detach(), -buf["advantages"].mean() * weights, rtol=1e-6, atol=0)
    # Call 2: the moved policy, against the hand computation, value and gradient.
    for p in params:
        p.grad = None
    hand = hand_loss(model, sampler, buf, idx, steps, clip_range)
    hand.backward()
    hand_grads = [p.grad.detach().clone() for p in params]
    # Float64 throughout, except that the estimator (like the sampler's std) takes |dt| as the float32 difference
    # of float32 sigmas, the hand one exactly: 6e-8 absolute on |dt| ~ 0.15, so 1e-6 relative on the weight.
    torch.testing.assert_close(out.loss.detach(), hand.detach(), rtol=1e-6, atol=0)
    for ours, theirs in zip(grads, hand_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6 * max(g.abs().max().item() for g in hand_grads))
    assert 0 < out.logs["clipfrac"] < 1  # the clip is active for some samples, not all: both branches tested
    # The reference code's batch-wide b gives another loss (the policy moved unevenly across samples).
    with torch.no_grad():
        wide = hand_loss(model, sampler, buf, idx, steps, clip_range, batch_wide_b=True)
    assert (wide - hand).abs() > 1e-6 * hand.abs()


def test_guarded_loss_gradient_matches_central_differences():
    """No clipping (a wide clip range): the loss is smooth in θ; float64 central differences of call 2's loss."""
    model, params, sampler, estimator, buf, idx, steps, _, grads, _ = moved_policy_case(clip_range=10.0)

    def loss_at():
        with torch.no_grad():
            return estimator.ppo_loss(model, sampler, idx, steps)[0].item()

    assert_central_differences(loss_at, grads, params, directions=2)


def test_guard_refuses_diffusion_samplers_and_bad_values():
    with pytest.raises(ConfigError, match="guard: true needs a flow-matching sampler"):
        GRPO(guard=True).check(DDIMSampler(steps=3, eta=1.0))
    GRPO(guard=False).check(DDIMSampler(steps=3, eta=1.0))
    with pytest.raises(ConfigError, match="estimator.guard must be true or false"):
        GRPO(guard="yes")


def test_a_checkpointed_buffer_without_means_is_sampled_afresh():
    estimator = GRPO(guard=True)
    plain = {
        "buffer." + k: torch.zeros(1)
        for k in ("latents", "log_probs", "advantages", "rewards", "cond", "steps", "perms", "order", "cursor")
    }
    estimator.load_state_dict(plain)
    assert estimator.buffer is None


class TestGuardedGRPO(EstimatorConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def setup(cls):
        return flow_with_lora(torch.float32)

    def make_estimator(self):
        return GRPO(group_size=2, guard=True, minibatches=2)

    def make_sampler(self):
        return FlowSDESampler(steps=self.steps, guidance_scale=3.0)

    def make_unsupported_sampler(self):
        return DDIMSampler(steps=self.steps, guidance_scale=3.0, eta=1.0)
