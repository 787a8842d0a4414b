"""ddpo and grpo: the PPO loss against REINFORCE and its clipping, advantages, the buffer's
schedule, and exact continuation from the estimator's state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_fixtures import grads_of, step_inputs, tiny_with_lora
from test_policy_samplers import density_by_hand, gaussian_by_hand

from draft_core.errors import ConfigError
from draft_core.plugins.protocols import StepInputs
from draft_core.samplers.ddim import DDIMSampler
from draft_estimators import DDPO, GRPO
from draft_estimators.advantages import PerPromptStatTracker, batch_advantages, group_advantages
from draft_estimators.kl import KLRegularized
from draft_estimators.policy import clipped_surrogate

PROMPTS = ["a cat", "a dog", "a cat", "a bird"]


class ValuesOnly:
    """A smooth function of the images, returned without a graph (differentiable = False)."""

    differentiable = False

    def __call__(self, images, prompts):
        with torch.no_grad():
            return images[:, 0].flatten(1).mean(1) - images[:, 2].flatten(1).mean(1)


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)


# -- the clipped surrogate -----------------------------------------------------------------


def test_ppo_gradient_at_ratio_one_is_the_reinforce_gradient():
    feats, w0 = _features()
    adv = torch.tensor([1.5, -0.3, 0.2, -2.0, 0.7], dtype=torch.float64)
    w = w0.clone().requires_grad_(True)
    new = torch.tanh(feats @ w)  # any differentiable log-probability
    loss, ratio = clipped_surrogate(new, new.detach(), adv, clip_range=1e-4)
    (g_ppo,) = torch.autograd.grad(loss, w)
    (g_reinforce,) = torch.autograd.grad(-(adv * torch.tanh(feats @ w)).mean(), w)
    assert torch.equal(ratio.detach(), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(g_ppo, g_reinforce, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("shift", "sign", "stopped"),
    [
        (0.5, 1.0, True),  # ratio e^0.5 > 1 + ε and A > 0: more would not help, the clip holds the gradient
        (-0.5, -1.0, True),  # ratio e^-0.5 < 1 − ε and A < 0: likewise
        (0.5, -1.0, False),  # ratio > 1 + ε but A < 0: the pessimistic (unclipped) term keeps its gradient
        (-0.5, 1.0, False),
        (0.5e-4, 1.0, False),  # inside the range: the plain ratio
    ],
)
def test_clipping_stops_the_gradient_where_the_ratio_leaves_the_range(shift, sign, stopped):
    feats, w0 = _features(1)
    w = w0.clone().requires_grad_(True)
    new = feats @ w
    old = new.detach() - shift  # ratio = e^shift for every sample
    adv = sign * torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
    loss, ratio = clipped_surrogate(new, old, adv, clip_range=1e-4)
    (grad,) = torch.autograd.grad(loss, w)
    if stopped:
        assert torch.equal(grad, torch.zeros_like(grad))
    else:
        expected = torch.autograd.grad(-(adv * torch.exp(feats @ w - old)).mean(), w)[0]
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)
        assert grad.abs().max() > 0


# -- advantages ------------------------------------------------------------------------------


def test_group_advantages_sum_to_zero_per_group():
    rewards = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    adv = group_advantages(rewards)
    torch.testing.assert_close(adv.sum(dim=0), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(adv.std(dim=0, unbiased=False), torch.ones(4, dtype=torch.float64), rtol=1e-3, atol=0)


def test_grpo_normalises_within_the_groups_it_samples():
    est = GRPO(group_size=3)
    rewards = torch.tensor([1.0, 10.0, 2.0, 20.0, 3.0, 30.0])  # rows g·B + k: prompt 0 gets 1, 2, 3
    adv, _ = est.advantages(rewards, ["a", "b"] * 3)
    torch.testing.assert_close(adv.view(3, 2), group_advantages(rewards.view(3, 2)).float())
    # the scale of a group does not matter (up to the 1e-4 added to the std)
    assert adv[0] < 0 < adv[4] and torch.allclose(adv[0::2], adv[1::2], rtol=1e-3)
    torch.testing.assert_close(est.report(rewards, 2), torch.tensor([2.0, 20.0]))


def test_per_prompt_tracker_falls_back_to_the_batch_then_uses_each_prompts_history():
    tracker = PerPromptStatTracker(buffer_size=3, min_count=2)
    first = torch.tensor([1.0, 5.0, 3.0])
    adv = tracker.update(["a", "b", "a"], first)
    # "a" has 2 rewards (>= min_count): its own mean 2, std 1; "b" has 1: the batch's mean 3, std sqrt(8/3).
    expected = torch.tensor(
        [(1 - 2) / (1 + 1e-6), (5 - 3) / ((8 / 3) ** 0.5 + 1e-6), (3 - 2) / (1 + 1e-6)], dtype=torch.float64
    )
    torch.testing.assert_close(adv, expected, rtol=1e-12, atol=0)
    tracker.update(["a", "a"], torch.tensor([7.0, 9.0]))  # "a" keeps its last 3: 3, 7, 9
    assert list(tracker.stats["a"]) == [3.0, 7.0, 9.0]
    restored = PerPromptStatTracker(buffer_size=3, min_count=2)
    restored.load_state_dict(tracker.state_dict())
    assert {k: list(v) for k, v in restored.stats.items()} == {k: list(v) for k, v in tracker.stats.items()}
    with pytest.raises(ConfigError, match="stat_buffer_size"):
        PerPromptStatTracker(buffer_size=4).load_state_dict(tracker.state_dict())
    torch.testing.assert_close(
        batch_advantages(torch.tensor([1.0, 3.0])), torch.tensor([-1.0, 1.0], dtype=torch.float64)
    )


# -- the estimators ----------------------------------------------------------------------------


def _setup(dtype=torch.float64, eta=1.0, prompts=PROMPTS, seed=0):
    model, params = tiny_with_lora(dtype)
    sampler = DDIMSampler(steps=3, guidance_scale=3.0, eta=eta)
    return model, params, step_inputs(model, sampler, ValuesOnly(), prompts, seed=seed)


def test_ddpo_first_update_is_reinforce_through_the_step_densities():
    """At the first update (ratio 1) the gradient is −mean_steps mean_b A_b ∇ log p_θ(x_{j+1} | x_j, c),
    with the log-density written out in float64 on the estimator's own stored trajectories."""
    model, params, inputs = _setup()
    est = DDPO(stat_min_count=1)  # each prompt's own statistics from the start
    grads, out = grads_of(est, inputs, params)
    buf = est.buffer
    steps = buf["order"][0].tolist()
    assert sorted(steps) == [0, 1, 2] and out.queries == 1 and out.logs["clipfrac"] == 0.0
    # the advantages are each prompt's normalised rewards: the two cats against each other, the rest 0
    rewards = ValuesOnly()(model.decode(buf["latents"][-1]), PROMPTS).double()
    cat = rewards[[0, 2]]
    expected = torch.zeros(4, dtype=torch.float64)
    expected[[0, 2]] = (cat - cat.mean()) / (cat.std(unbiased=False) + 1e-6)
    torch.testing.assert_close(buf["advantages"].double(), expected, rtol=1e-6, atol=1e-6)

    cond = inputs.cond
    surrogate = 0.0
    for j in steps:
        mean, std = gaussian_by_hand(model, inputs.sampler, buf["latents"][j], j, cond, True)
        lp = density_by_hand(buf["latents"][j + 1], mean, std)
        surrogate = surrogate - (buf["advantages"] * lp).mean()
    by_hand = torch.autograd.grad(surrogate / len(steps), params)
    flat, hand = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in by_hand])
    assert flat.abs().max() > 0
    # float32 ᾱ inside diffusers' step (see test_policy_samplers): compare relative to the largest entry
    torch.testing.assert_close(flat, hand, rtol=1e-5, atol=1e-5 * hand.abs().max().item())


def test_buffer_serves_inner_epochs_times_minibatches_calls_then_resamples():
    model, params, inputs = _setup(torch.float32)
    est = DDPO(inner_epochs=2, minibatches=2, timestep_fraction=0.5)
    seen, fresh, queries = [], [], []
    for _ in range(5):
        out = est(inputs)
        out.loss.backward()
        fresh.append(out.logs["fresh_samples"])
        queries.append(out.queries)
        seen.append(out.reward)
    assert fresh == [1.0, 0.0, 0.0, 0.0, 1.0] and queries == [1, 0, 0, 0, 1]
    assert all(torch.equal(seen[0], r) for r in seen[1:4]) and not torch.equal(seen[0], seen[4])
    perms = est.buffer["perms"]
    assert est.buffer["order"].shape == (4, 1)  # int(0.5 · 3 noisy steps) = 1 step per update
    assert all(sorted(p.tolist()) == [0, 1, 2, 3] for p in perms)  # each pass covers every trajectory


def test_state_dict_round_trip_continues_exactly():
    """Stopped mid-buffer, restored into a fresh estimator: the same losses and gradients, bit for bit."""

    def run(est, inputs, params, n):
        out = []
        for _ in range(n):
            grads, o = grads_of(est, inputs, params)
            out.append((o.loss.detach(), grads))
            with torch.no_grad():  # move the policy, so the stored log-probabilities become off-policy
                for p, g in zip(params, grads):
                    p -= 0.05 * g
        return out

    make = lambda: DDPO(inner_epochs=2, minibatches=2, stat_min_count=2)  # noqa: E731
    model, params, inputs = _setup(torch.float32)
    straight = run(make(), inputs, params, 5)

    model, params, inputs = _setup(torch.float32)
    first = make()
    run(first, inputs, params, 2)
    state = first.state_dict()
    assert {"buffer.latents", "buffer.cursor", "tracker.values"} <= set(state)
    resumed = make()
    resumed.load_state_dict({k: v.clone() for k, v in state.items()})
    rest = run(resumed, inputs, params, 3)
    for (la, ga), (lb, gb) in zip(straight[2:], rest):
        assert torch.equal(la, lb)
        assert all(torch.equal(a, b) for a, b in zip(ga, gb))
    assert any(o[0] != 0 for o in rest)


def test_grpo_kl_term_pulls_towards_the_base_model():
    model, params, inputs = _setup(torch.float32, prompts=["a cat", "a dog"])
    est = GRPO(group_size=2, beta=1.0)
    out = est(inputs)
    assert out.queries == 2 and out.logs["kl"] > 0 and out.reward.shape == (2,)
    for p in params:  # with the LoRA's B factor zero the policy is the base: the KL vanishes
        if p.shape[1] == 2:
            p.data.zero_()
    est2 = GRPO(group_size=2, beta=1.0)
    assert est2(inputs).logs["kl"] == 0.0


def test_argument_errors_name_the_value():
    with pytest.raises(ConfigError, match="estimator.clip_range"):
        DDPO(clip_range=0)
    with pytest.raises(ConfigError, match="estimator.timestep_fraction"):
        DDPO(timestep_fraction=1.5)
    with pytest.raises(ConfigError, match="estimator.group_size"):
        GRPO(group_size=1)
    with pytest.raises(ConfigError, match="estimator.minibatches=8 exceeds the 4"):
        model, params, inputs = _setup(torch.float32)
        DDPO(minibatches=8)(inputs)
    with pytest.raises(ConfigError, match="estimator.beta"):
        KLRegularized(GRPO(), 0.1)


def test_a_sampler_whose_steps_draw_no_noise_for_this_model_is_refused():
    model, params, inputs = _setup(torch.float32)
    inputs = StepInputs(
        inputs.model, DDIMSampler(steps=3, eta=0.0), inputs.reward, inputs.cond, inputs.noise, inputs.generator
    )
    with pytest.raises(ConfigError, match="stochastic sampler"):
        DDPO()(inputs)


def test_ddpo_resumed_mid_buffer_ends_bit_for_bit_as_an_uninterrupted_run(tmp_path):
    """The checkpoint after step 1 holds the trajectory buffer (one minibatch left) and the
    per-prompt statistics; resuming from it must give the uninterrupted run's LoRA exactly."""
    import json

    from safetensors.torch import load_file

    from draft_core import cli

    sets = []
    for s in [
        "model.name=tiny-random",
        "prompts.source=animals",
        "sampler={name: ddim, steps: 3, eta: 1.0}",
        "estimator={name: ddpo, minibatches: 2, stat_min_count: 2}",
        "reward={name: jpeg-size}",
        "train.batch_size=2",
        "train.lr=0.01",
        "train.sample_every=0",
        "train.sample_prompts=[a cat]",
        "train.sample_per_prompt=1",
        "train.checkpoint_every=1",
        "lora.rank=2",
    ]:
        sets += ["--set", s]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train = ["train", "--preset", "quickstart", "--no-progress"]
    assert cli.main([*train, "--out", str(straight), *sets, "--set", "train.steps=3"]) == 0
    assert cli.main([*train, "--out", str(split), *sets, "--set", "train.steps=1"]) == 0
    extra = load_file(split / "checkpoints" / "step-000001" / "extra.safetensors")
    assert int(extra["buffer.cursor"]) == 1 and "tracker.values" in extra
    assert cli.main(["train", "--resume", str(split), "--set", "train.steps=3", "--no-progress"]) == 0
    a = load_file(straight / "lora" / "pytorch_lora_weights.safetensors")
    b = load_file(split / "lora" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda run: [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["loss"] for r in rows(split)] == [r["loss"] for r in rows(straight)]
    assert [r["fresh_samples"] for r in rows(split)] == [1.0, 0.0, 1.0]
    # a step that reuses stored samples queries the reward no more
    assert [r["reward_queries"] for r in rows(split)] == [2, 0, 2] and all(r["reward_mean"] < 0 for r in rows(split))


def test_ddpo_advantages_use_every_processs_rewards(monkeypatch):
    """With torch.distributed up, the statistics come from the gathered batch and each process takes
    its own slice (the collective faked here; the slow test below runs two real processes)."""
    import torch.distributed as dist
    from ddpo_gather_worker import PROMPTS as P
    from ddpo_gather_worker import REWARDS as R

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(
        dist, "all_gather_object", lambda out, obj: out.__setitem__(slice(None), [(P[0], R[0].double()), obj])
    )
    mine, _ = DDPO(stat_min_count=2).advantages(R[1], P[1])
    monkeypatch.undo()
    everyone, _ = DDPO(stat_min_count=2).advantages(torch.cat(R), P[0] + P[1])
    assert torch.equal(mine, everyone[3:])


@pytest.mark.slow  # two spawned interpreters (~15 s on 2 cores); the test above checks the same arithmetic
def test_ddpo_advantage_statistics_are_gathered_across_processes(tmp_path):
    """Two gloo processes get the advantages one process computes on their concatenated batch,
    and both keep the same per-prompt statistics."""
    import torch.multiprocessing as mp
    from ddpo_gather_worker import PROMPTS as P
    from ddpo_gather_worker import REWARDS as R
    from ddpo_gather_worker import advantages_worker

    mp.spawn(advantages_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    one = DDPO(stat_min_count=2)
    first, _ = one.advantages(torch.cat(R), P[0] + P[1])
    second, _ = one.advantages(torch.cat(R) + 1, P[0] + P[1])
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert torch.equal(torch.cat([r["first"] for r in ranks]), first)
    assert torch.equal(torch.cat([r["second"] for r in ranks]), second)
    for key, value in one.state_dict().items():
        for r in ranks:  # NaN pads the statistics of prompts seen fewer than stat_buffer_size times
            torch.testing.assert_close(r[key], value, rtol=0, atol=0, equal_nan=True, msg=key)


@pytest.mark.slow  # two torchrun launches of two processes each (a minute or more on 2 cores)
def test_ddpo_with_two_processes_resumes_each_processs_buffer(tmp_path):
    """Data parallel: each process stores its own trajectories; stopped mid-buffer (after step 1)
    or at a buffer's end (after step 2), the resumed runs end with the same LoRA on both processes."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    root = Path(__file__).resolve().parents[1]
    sets = [
        "model.name=tiny-random",
        "prompts.source=animals",
        "sampler={name: ddim, steps: 3, eta: 1.0}",
        "estimator={name: ddpo, minibatches: 2, stat_min_count: 2}",
        "reward={name: jpeg-size}",
        "train.batch_size=4",
        "train.lr=0.01",
        "train.sample_every=0",
        "train.sample_per_prompt=1",
        "train.sample_prompts=[a cat]",
        "lora.rank=2",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=3",
    ]
    finals = []
    for split in (1, 2):
        dump = tmp_path / f"dump{split}"
        dump.mkdir()
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(root),
            "HF_HUB_OFFLINE": "1",
            "DP_WORKER_SPLIT": str(split),
        }
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(root / "tests" / "dp_worker.py"),
            str(dump),
            str(tmp_path / f"run{split}"),
            "3",
            "--preset",
            "quickstart",
            *sum((["--set", s] for s in sets), []),
        ]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        finals.append([load_file(dump / f"rank{r}-step3.safetensors") for r in (0, 1)])
    extra = load_file(tmp_path / "run1" / "checkpoints" / "step-000001" / "extra.safetensors")
    assert {"buffer.latents", "rank1/buffer.latents"} <= set(extra)
    assert not torch.equal(extra["buffer.latents"], extra["rank1/buffer.latents"])
    reference = finals[0][0]
    for lora in (finals[0][1], *finals[1]):
        assert all(torch.equal(reference[k], lora[k]) for k in reference)
