"""``timestep_batch`` of the policy-gradient estimators: several trained steps in one denoiser call
give the step-by-step loss and gradients (float64). ddpo on the ``sd`` family, on every backward path
(per-chunk backward, recomputation, none); on the flow family (``sd3``, as ``digits-flow``) the flow
samplers' batched step Gaussians, and grpo (with and without GRPO-Guard) and mix-grpo."""

from __future__ import annotations

import pytest
import torch
from flow_fixtures import flow_with_lora
from model_fixtures import grads_of, step_inputs, tiny_with_lora
from test_policy_gradient import ValuesOnly

from draft_core.errors import ConfigError
from draft_core.samplers import FlowSDESampler
from draft_core.samplers.cps import CPSSampler
from draft_core.samplers.ddim import DDIMSampler
from draft_core.samplers.ddpm import DDPMSampler
from draft_estimators import DDPO, GRPO, MixGRPO

PROMPTS = ["a cat", "a dog"]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    # float64 throughout; the only difference is the summation order inside batched kernels
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * max(b.abs().max().item(), 1.0))


def _record_batches(model, into: list[int]):
    """Hook the denoiser: append each call's batch (the UNet's positional sample, the MMDiT's hidden_states)."""
    return model.denoiser.register_forward_hook(
        lambda module, args, kwargs, out: into.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True,
    )


def _check_batched_gaussians(model, sampler) -> None:
    """The sampler's Gaussians at 3 (state, step) pairs in one denoiser call equal its step-by-step ones."""
    cond = model.encode_prompts(PROMPTS)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(len(PROMPTS), *model.sample_shape, generator=g, dtype=torch.float64) for _ in range(3)]
    steps = [2, 0, 1]
    calls: list[int] = []
    hook = _record_batches(model, calls)
    for lora_on in (True, False):
        calls.clear()
        batched = sampler.transition_distributions(model, xs, steps, cond, lora_on)
        assert calls == [(2 if sampler.guidance_scale != 1 else 1) * 3 * len(PROMPTS)]  # one call
        for (mean, std), x, j in zip(batched, xs, steps):
            ref_mean, ref_std = sampler.transition_distribution(model, x, j, cond, lora_on)
            _close(mean, ref_mean)
            _close(torch.as_tensor(std), torch.as_tensor(ref_std))
    hook.remove()


def _two_updates(model, params, make_estimator, sampler, split: bool, trajectories: int) -> None:
    """Two updates on one sampled batch (inner_epochs 2), the policy moved in between so that the
    second one is off-policy (ratios != 1, a nonzero loss; at ratio 1 the loss is −mean(A) = 0):
    the same loss and gradients with timestep_batch 1 and 2 (a chunk of 2 steps, then one of 1)."""
    start = [p.detach().clone() for p in params]
    results = []
    for size in (1, 2):
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
        inputs = step_inputs(model, sampler, ValuesOnly(), PROMPTS)  # the same trajectories each time
        est = make_estimator(size)
        calls, batches = [], []
        hook = _record_batches(model, batches)
        for _ in range(2):
            grads, out = grads_of(est, inputs, params, split=split)
            calls.append((out.loss.detach(), grads))
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= 50.0 * g
        hook.remove()
        assert max(batches) == 2 * trajectories * size  # CFG doubles; size 2 puts two steps in one call
        results.append(calls)
    assert results[0][1][0] != 0 and all(max(g.abs().max() for g in grads) > 0 for _, grads in results[0])
    for (loss_a, grads_a), (loss_b, grads_b) in zip(*results):
        _close(loss_b, loss_a)
        for a, b in zip(grads_b, grads_a):
            _close(a, b)


@pytest.mark.parametrize(
    "sampler",
    [
        DDIMSampler(steps=3, guidance_scale=3.0, eta=1.0),
        DDIMSampler(steps=3, guidance_scale=1.0, eta=0.5),
        DDPMSampler(steps=3),
    ],
)
def test_batched_step_gaussians_equal_the_step_by_step_ones(sampler):
    _check_batched_gaussians(tiny_with_lora(torch.float64)[0], sampler)


@pytest.mark.parametrize("split, checkpoint", [(True, True), (False, True), (False, False)])
def test_ddpo_timestep_batch_gives_the_step_by_step_loss_and_gradient(split, checkpoint):
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=3, guidance_scale=3.0, eta=1.0)

    def make(size):
        return DDPO(per_prompt_stat_tracking=False, inner_epochs=2, checkpoint=checkpoint, timestep_batch=size)

    _two_updates(model, params, make, sampler, split, trajectories=len(PROMPTS))


def test_the_kl_term_batches_its_base_model_pass_too():
    model, params = tiny_with_lora(torch.float64)
    results = []
    for size in (1, 3):
        sampler = DDIMSampler(steps=3, guidance_scale=3.0, eta=1.0)
        inputs = step_inputs(model, sampler, ValuesOnly(), ["a cat"])
        est = GRPO(group_size=2, beta=0.5, timestep_batch=size)
        grads, out = grads_of(est, inputs, params, split=True)
        results.append((out.logs["kl"], grads))
    assert results[0][0] > 0
    _close(torch.tensor(results[1][0]), torch.tensor(results[0][0]))
    for a, b in zip(results[1][1], results[0][1]):
        _close(a, b)


@pytest.mark.parametrize("bad", [0, 1.5, True, "4", "Auto"])
def test_timestep_batch_must_be_a_positive_integer_or_auto(bad):
    with pytest.raises(
        ConfigError, match=rf"estimator.timestep_batch must be an integer >= 1 .* or 'auto' .*got {bad!r}"
    ):
        DDPO(timestep_batch=bad)


def test_auto_batches_small_states_only(monkeypatch):
    """'auto' chunks by the states' size: every step in one call for the tiny model, one per call
    once a step's states exceed AUTO_TIMESTEP_ELEMENTS."""
    import draft_estimators.policy as policy

    model, params = tiny_with_lora(torch.float32)
    sizes = []
    for budget in (policy.AUTO_TIMESTEP_ELEMENTS, 1):
        monkeypatch.setattr(policy, "AUTO_TIMESTEP_ELEMENTS", budget)
        calls = []
        hook = model.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
        inputs = step_inputs(model, DDIMSampler(steps=3, guidance_scale=3.0, eta=1.0), ValuesOnly(), PROMPTS)
        grads_of(DDPO(per_prompt_stat_tracking=False), inputs, params, split=True)
        hook.remove()
        sizes.append(calls[3:])  # after the 3 sampling calls
    assert sizes == [[2 * 3 * len(PROMPTS)], [2 * len(PROMPTS)] * 3]


# -- the flow family: grpo, grpo guard, mix-grpo ------------------------------------------------


@pytest.mark.parametrize(
    "sampler",
    [
        FlowSDESampler(steps=3, guidance_scale=3.0, eta=0.7),
        FlowSDESampler(steps=3, guidance_scale=1.0, eta=0.7, diffusion="dance-grpo"),
        CPSSampler(steps=3, guidance_scale=3.0, eta=0.8),
    ],
    ids=["flow-sde", "flow-sde dance-grpo, no CFG", "cps"],
)
def test_batched_flow_step_gaussians_equal_the_step_by_step_ones(sampler):
    _check_batched_gaussians(flow_with_lora(torch.float64)[0], sampler)


@pytest.mark.parametrize("guard", [False, True], ids=["grpo", "grpo guard"])
@pytest.mark.parametrize("split", [True, False], ids=["backward per chunk", "recomputed"])
def test_grpo_timestep_batch_gives_the_step_by_step_loss_and_gradient(guard, split):
    model, params = flow_with_lora(torch.float64)
    sampler = FlowSDESampler(steps=3, guidance_scale=3.0, eta=0.7)

    def make(size):
        return GRPO(group_size=2, inner_epochs=2, guard=guard, timestep_batch=size)

    _two_updates(model, params, make, sampler, split, trajectories=2 * len(PROMPTS))


def test_mix_grpo_timestep_batch_gives_the_step_by_step_loss_and_gradient():
    model, params = flow_with_lora(torch.float64)
    sampler = FlowSDESampler(steps=3, guidance_scale=3.0, eta=0.7)

    def make(size):
        return MixGRPO(window=3, group_size=2, inner_epochs=2, timestep_batch=size)

    _two_updates(model, params, make, sampler, True, trajectories=2 * len(PROMPTS))


def test_repr_names_a_timestep_batch_other_than_auto():
    assert "timestep_batch" not in repr(GRPO()) and "timestep_batch=1)" in repr(GRPO(timestep_batch=1))
    assert "timestep_batch=2)" in repr(MixGRPO(timestep_batch=2))
