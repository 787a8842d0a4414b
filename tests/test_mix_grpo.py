"""mix-grpo: a window covering every step is grpo on flow-sde (same seeds, same loss and gradients, with
and without the guard); outside the window the rollout takes Euler steps and nothing is trained; the
progressive and random window schedules; refusals; the estimator checklist."""

from __future__ import annotations

import pytest
import torch
from flow_fixtures import flow_with_lora
from model_fixtures import LinearReward, grads_of, step_inputs

from draft_core.errors import ConfigError
from draft_core.samplers import CPSSampler, DDIMSampler, EulerSampler, FlowSDESampler
from draft_core.testing.estimators import EstimatorConformance
from draft_estimators import GRPO, MixGRPO

PROMPTS = ["a cat", "a dog"]


@pytest.fixture(scope="module")
def case():
    model, params = flow_with_lora(torch.float64)
    return model, params, LinearReward((1, 3, 8, 8), torch.float64)


@pytest.mark.parametrize("guard", [False, True], ids=["plain", "guard"])
def test_a_window_over_every_step_is_grpo_on_flow_sde(case, guard):
    model, params, reward = case
    sampler = FlowSDESampler(steps=3, guidance_scale=3.0)
    results = []
    for estimator in (
        GRPO(group_size=2, guard=guard, inner_epochs=2),
        MixGRPO(window=3, same_noise=False, group_size=2, guard=guard, inner_epochs=2),
    ):
        inputs = step_inputs(model, sampler, reward, PROMPTS)
        calls = [grads_of(estimator, inputs, params) for _ in range(2)]  # the sampling call and a reuse
        results.append(calls)
    for (grads_a, out_a), (grads_b, out_b) in zip(*results):
        assert torch.equal(out_a.loss.detach(), out_b.loss.detach())
        assert torch.equal(out_a.reward, out_b.reward)
        assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_outside_the_window_the_rollout_is_euler_and_untrained(case):
    model, params, reward = case
    sampler = FlowSDESampler(steps=3, guidance_scale=3.0)
    estimator = MixGRPO(window=1, stride=1, iters_per_group=1, group_size=2)
    estimator.iteration = 1  # the second window position: step 1 only
    out = estimator(step_inputs(model, sampler, reward, PROMPTS))
    buf = estimator.buffer
    assert buf["steps"].tolist() == [1] and buf["order"].tolist() == [[1]]
    assert out.logs["window_start"] == 1.0 and out.logs["ppo_steps"] == 1.0
    assert (buf["log_probs"][0] == 0).all() and (buf["log_probs"][2] == 0).all() and (buf["log_probs"][1] != 0).all()
    cond = model.encode_prompts(PROMPTS).repeat(2)
    euler = EulerSampler(steps=3, guidance_scale=3.0)
    with torch.no_grad():
        for i in (0, 2):  # the ODE steps are euler's own step, bit for bit
            x = buf["latents"][i]
            assert torch.equal(buf["latents"][i + 1], euler.transition(model, x, i, euler.action(model, x, i, cond)))
    # same_noise (the default): a prompt's samples start from the same noise and split at the window
    assert torch.equal(buf["latents"][0][:2], buf["latents"][0][2:])
    assert torch.equal(buf["latents"][1][:2], buf["latents"][1][2:]) and not torch.equal(
        buf["latents"][2][:2], buf["latents"][2][2:]
    )


def test_window_schedules():
    progressive = MixGRPO(window=4, stride=1, iters_per_group=25)  # the reference's FLUX setting, N = 25
    starts = [progressive.start_at(k, 25) for k in range(0, 25 * 26, 25)]
    assert starts == list(range(24)) + [0, 1]  # c = 0 .. N − 2, then rolled back
    assert [progressive.start_at(k, 25) for k in (0, 24, 25, 49, 50)] == [0, 0, 1, 1, 2]
    frozen = MixGRPO(stride=0)
    assert {frozen.start_at(k, 10) for k in range(0, 500, 7)} == {0}
    no_roll = MixGRPO(stride=3, iters_per_group=1, roll_back=False)
    assert [no_roll.start_at(k, 10) for k in range(5)] == [0, 3, 6, 8, 8]
    rolled = MixGRPO(stride=3, iters_per_group=1)
    assert [rolled.start_at(k, 10) for k in range(5)] == [0, 3, 6, 0, 3]
    random = MixGRPO(window=3, schedule="random")
    g = torch.Generator().manual_seed(0)
    assert {random.start_at(0, 6, g) for _ in range(200)} == {0, 1, 2, 3}
    # the clock: optimiser steps, saved with the estimator's state
    progressive.on_optimizer_step(True)
    restored = MixGRPO()
    restored.load_state_dict(progressive.state_dict())
    assert restored.iteration == 1


def test_refusals():
    with pytest.raises(ConfigError, match="needs a flow-matching model and sampler"):
        MixGRPO().check(DDIMSampler(steps=4, eta=1.0))
    with pytest.raises(ConfigError, match="stochastic sampler"):
        MixGRPO().check(EulerSampler(steps=4))
    MixGRPO().check(CPSSampler(steps=4))
    with pytest.raises(ConfigError, match="estimator.schedule must be one of progressive, random"):
        MixGRPO(schedule="decay")
    with pytest.raises(ConfigError, match="estimator.window must be an integer >= 1"):
        MixGRPO(window=0)
    with pytest.raises(ConfigError, match="estimator.same_noise must be true or false"):
        MixGRPO(same_noise="yes")


class TestMixGRPO(EstimatorConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def setup(cls):
        return flow_with_lora(torch.float32)

    def make_estimator(self):
        return MixGRPO(window=2, group_size=2, guard=True)

    def make_sampler(self):
        return FlowSDESampler(steps=self.steps, guidance_scale=3.0)

    def make_unsupported_sampler(self):
        return DDIMSampler(steps=self.steps, guidance_scale=3.0, eta=1.0)
