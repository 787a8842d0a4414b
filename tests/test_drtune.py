"""drtune against mathematics: float64 central differences of the stated objective (the model's inputs
held at the trajectory's states, the untrained steps' outputs held, the chain's linear updates followed),
its gradient as the sum of the per-step terms b_k·Π_{j>k} a_j·(∂f/∂θ)ᵀ·∂L/∂x_T written out for euler and
DDIM, the evenly spread step subset, and the estimator checklist on both families."""

from __future__ import annotations

import pytest
import torch
from flow_fixtures import flow_with_lora
from model_fixtures import LinearReward, assert_central_differences, grads_of, step_inputs, tiny_with_lora

from draft_core.errors import ConfigError
from draft_core.samplers import DDPMSampler, EulerSampler
from draft_core.samplers.ddim import DDIMSampler
from draft_core.testing.estimators import EstimatorConformance
from draft_estimators import DRTune
from draft_estimators.drtune import spread_steps

CASES = {
    "euler": lambda: (flow_with_lora(torch.float64), EulerSampler(steps=4, guidance_scale=3.0), (1, 3, 8, 8)),
    "ddim": lambda: (tiny_with_lora(torch.float64), DDIMSampler(steps=4, guidance_scale=3.0), (1, 3, 64, 64)),
    "ddpm": lambda: (tiny_with_lora(torch.float64), DDPMSampler(steps=4, guidance_scale=3.0), (1, 3, 64, 64)),
}


def case(name, k=2):
    (model, params), sampler, shape = CASES[name]()
    inputs = step_inputs(model, sampler, LinearReward(shape, torch.float64), ["a cat"])
    state = inputs.generator.get_state()
    grads, out = grads_of(DRTune(k=k), inputs, params)
    inputs.generator.set_state(state)
    trained = spread_steps(sampler.num_steps, k, inputs.generator)
    assert out.logs["first_trained_step"] == trained[0]
    # The trajectory at the current θ: each step's input, model output and noise (drawn as the estimator drew them).
    states, outputs, draws = [], [], []
    with torch.no_grad():
        x = sampler.initial_sample(model, inputs.noise)
        for i in range(sampler.num_steps):
            draws.append(sampler.draw_step_noise(x, inputs.generator))
            states.append(x)
            outputs.append(sampler.action(model, x, i, inputs.cond))
            x = sampler.transition(model, x, i, outputs[-1], draws[-1])
    for p in params:
        p.grad = None
    return model, params, sampler, inputs, grads, out, trained, (states, outputs, draws, x)


@pytest.mark.parametrize("name", ["euler", "ddpm"])
def test_drtune_matches_central_differences_of_its_stated_objective(name):
    """L(θ) = −r(x_T), x_{k+1} = step_k(x_k, f_k): f_k = f_θ(x̄_k) at a trained step (x̄_k the trajectory's state
    at the current θ, held: the stop-gradient), f_k held at its current value elsewhere."""
    model, params, sampler, inputs, grads, out, trained, (states, outputs, draws, x_end) = case(name)

    def loss_at():
        with torch.no_grad():
            x = sampler.initial_sample(model, inputs.noise)
            for i in range(sampler.num_steps):
                f = sampler.action(model, states[i], i, inputs.cond) if i in trained else outputs[i]
                x = sampler.transition(model, x, i, f, draws[i])
            return -inputs.reward(model.decode(x), inputs.cond.prompts).mean().item()

    assert loss_at() == pytest.approx(out.loss.item(), rel=1e-12)
    assert_central_differences(loss_at, grads, params, directions=2, h=3e-5, rel=1e-5)


def coefficients(model, sampler, step):
    """(a_k, b_k) of x_{k+1} = a_k·x_k + b_k·f_k: euler a = 1, b = σ_{k+1} − σ_k; DDIM (eta 0) from ᾱ."""
    sched = sampler.scheduler(model)
    if sampler.flow_matching:
        return torch.tensor(1.0, dtype=torch.float64), (sched.sigmas[step + 1] - sched.sigmas[step]).double()
    ac = sched.alphas_cumprod.double()
    t = int(sched.timesteps[step])
    prev = t - sched.config.num_train_timesteps // sampler.num_steps
    abar, abar_prev = ac[t], (ac[prev] if prev >= 0 else sched.final_alpha_cumprod.double())
    a = (abar_prev / abar).sqrt()
    return a, (1 - abar_prev).sqrt() - a * (1 - abar).sqrt()


@pytest.mark.parametrize("name", ["euler", "ddim"])
def test_drtune_gradient_is_the_sum_of_the_per_step_terms(name):
    """∇L = Σ_{k∈S} ∇_θ ⟨b_k·Π_{j>k} a_j·f_θ(x̄_k), ∂L/∂x_T⟩: one model VJP per trained step, nothing else."""
    model, params, sampler, inputs, grads, _, trained, (states, _, _, x_end) = case(name)
    x_end = x_end.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(-inputs.reward(model.decode(x_end), inputs.cond.prompts).mean(), x_end)
    coef = [coefficients(model, sampler, k) for k in range(sampler.num_steps)]
    total = 0.0
    for k in trained:
        later = torch.prod(torch.stack([coef[j][0] for j in range(k + 1, sampler.num_steps)] or [torch.ones(())]))
        total = total + coef[k][1] * later * (sampler.action(model, states[k], k, inputs.cond) * g).sum()
    total.backward()
    by_hand = torch.cat([p.grad.flatten() for p in params])
    mine = torch.cat([gr.flatten() for gr in grads])
    assert by_hand.abs().max() > 0
    # Euler: the same float64 numbers; DDIM: diffusers' step takes the ᾱ roots in float32 (~1e-8 relative).
    rel = 1e-10 if name == "euler" else 1e-6
    torch.testing.assert_close(mine, by_hand, rtol=rel, atol=rel * by_hand.abs().max().item())


def test_the_trained_steps_are_spread_evenly_from_a_uniform_start():
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(200):
        steps = spread_steps(10, 3, g)
        assert [b - a for a, b in zip(steps, steps[1:])] == [3, 3] and steps[-1] <= 9
        starts.add(steps[0])
    assert starts == {0, 1, 2, 3}
    assert spread_steps(4, 4, g) == [0, 1, 2, 3]


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="estimator.k must"):
        DRTune(k=0)
    with pytest.raises(ConfigError, match="exceeds sampler.steps=2"):
        DRTune(k=3).check(EulerSampler(steps=2))


class TestDRTune(EstimatorConformance):
    def make_estimator(self):
        return DRTune(k=2)

    def make_unsupported_sampler(self):
        return DDIMSampler(steps=1)


class TestDRTuneOnAFlowFamily(EstimatorConformance):
    def make_model(self):
        from flow_fixtures import tiny_pixel_flow

        return tiny_pixel_flow()

    def make_sampler(self):
        return EulerSampler(steps=self.steps, guidance_scale=3.0)

    def make_estimator(self):
        return DRTune(k=1)
