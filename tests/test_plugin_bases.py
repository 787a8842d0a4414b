"""Plugins written to the documented contract without the optional members get every member at its
default through the adapters of draft_core.plugins.bases; plugins with their own keep them."""

from __future__ import annotations

import torch

from draft_core.plugins.bases import (
    EstimatorBase,
    RewardBase,
    SamplerBase,
    as_estimator,
    as_reward,
    as_sampler,
    unwrapped,
    wraps_estimator,
)
from draft_core.samplers.ddim import DDIMSampler


def test_a_plain_function_is_a_reward_with_the_defaults():
    def brightness(images, prompts=()):
        return images.mean((1, 2, 3))

    reward = as_reward(brightness)
    assert isinstance(reward, RewardBase) and unwrapped(reward) is brightness
    assert reward.differentiable and not reward.uses_prompts and dict(reward.last_terms) == {}
    assert reward.check_available() is None and reward.to("cpu") is reward
    images = torch.rand(2, 3, 4, 4)
    assert torch.equal(reward(images, ["a", "b"]), brightness(images))


def test_a_class_keeps_its_own_members_and_gets_the_others():
    class Judge:
        differentiable = False

        def __init__(self):
            self.moved = None

        def to(self, device):
            self.moved = device

        def __call__(self, images, prompts):
            return images.mean((1, 2, 3))

    judge = Judge()
    reward = as_reward(judge)
    assert not reward.differentiable and not reward.uses_prompts
    reward.to("cpu")
    assert judge.moved == "cpu"


def test_an_estimator_without_optional_methods():
    calls = []

    class Plain:
        def __call__(self, inputs):
            calls.append(inputs)
            return "out"

    plain = Plain()
    estimator = as_estimator(plain)
    assert isinstance(estimator, EstimatorBase) and estimator.needs_reward_gradient
    assert estimator.check(DDIMSampler(steps=2)) is None and estimator.differentiated_steps(3) is None
    assert estimator.state_dict() == {} and estimator.load_state_dict({}) is None
    assert estimator.on_optimizer_step(True) is None
    assert estimator("inputs") == "out" and calls == ["inputs"]
    estimator.seen = 1  # attributes written through the adapter land on the plugin
    assert plain.seen == 1
    assert as_estimator(estimator) is estimator and not wraps_estimator(Plain)


def test_builtins_derive_from_the_bases_and_are_not_wrapped():
    sampler = DDIMSampler(steps=2)
    assert as_sampler(sampler) is sampler and isinstance(sampler, SamplerBase)
    assert sampler.flow_matching is False and sampler.guidance_scale == 7.5 and not sampler.stochastic


def test_an_outside_sampler_gets_the_capability_defaults():
    class Mine:
        num_steps = 4

        def sample(self, model, cond, noise, **kwargs):
            return noise

    sampler = as_sampler(Mine())
    assert sampler.num_steps == 4 and sampler.flow_matching is None and sampler.eta is None
    assert not sampler.stochastic and sampler.guidance_scale is None
    noise = torch.zeros(1)
    assert sampler.sample(None, None, noise) is noise
