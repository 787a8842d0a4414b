"""The `dpg` estimator (paper Appendix C.2): policy gradient by hand, critic training, state."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from model_fixtures import LinearReward, PooledLinearReward, grads_of, guided_eps, step_inputs, tiny_with_lora

from draft_core.errors import ConfigError
from draft_core.samplers import DDPMSampler
from draft_core.samplers.ddim import DDIMSampler
from draft_estimators.dpg import DeterministicPolicyGradient

PROMPTS = ["a cat", "a dog"]


def _setup(states=3, guidance=3.0, seed=0):
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=3, guidance_scale=guidance)
    reward = PooledLinearReward()
    inputs = step_inputs(model, sampler, reward, PROMPTS, seed=seed)
    est = DeterministicPolicyGradient(states=states, critic_rank=2, critic_lr=1e-2)
    return model, params, sampler, reward, inputs, est


def _randomise_critic(est, reward, seed=1):
    est._build_critic(reward)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in est.critic_params:
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
    for p in est.critic.parameters():
        p.data = p.data.double()


def _q_by_hand(model, sampler, critic, cond, state, step, a):
    """Equation 3 from the DDIM formulas (epsilon prediction), independent of the scheduler's step()."""
    sched = sampler.scheduler(model)
    ac = sched.alphas_cumprod.to(torch.float64)
    ts = sched.timesteps
    t = int(ts[step])
    prev = t - sched.config.num_train_timesteps // sampler.num_steps
    a_t = ac[t]
    a_prev = ac[prev] if prev >= 0 else sched.final_alpha_cumprod.to(torch.float64)
    x0 = (state - (1 - a_t).sqrt() * a) / a_t.sqrt()
    nxt = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * a
    if step == sampler.num_steps - 1:
        x0_hat = nxt
    else:
        t1 = ts[step + 1]
        eps = guided_eps(model, nxt, t1, cond, sampler.guidance_scale)
        a1 = ac[int(t1)]
        x0_hat = (nxt - (1 - a1).sqrt() * eps) / a1.sqrt()
    return critic(model.decode(x0_hat), cond.prompts)


def _estimator_grads_and_trajectory(states=3):
    """The estimator's gradient (critic randomised first, kept as it was before its update),
    and the no-grad trajectory it acted on as (step, state, timestep) triples."""
    model, params, sampler, reward, inputs, est = _setup(states=states)
    _randomise_critic(est, reward)
    critic_before = copy.deepcopy(est.critic)
    grads, out = grads_of(est, inputs, params)
    trace = []
    with torch.no_grad():
        sampler.sample(model, inputs.cond, inputs.noise, trace=trace)
    for p in params:
        p.grad = None
    steps = [(step, state, sampler.timesteps(model)[step]) for step, state in trace]
    return model, params, sampler, inputs, critic_before, grads, out, steps


def test_policy_gradient_is_grad_a_q_times_dmu_dtheta():
    model, params, sampler, inputs, critic_before, grads, out, steps = _estimator_grads_and_trajectory()

    # By hand: ∇_a Q with the UNet's parameters frozen inside Q, then ⟨g, μ_θ(s)⟩ differentiated in θ.
    frozen = copy.deepcopy(model)
    frozen.unet.requires_grad_(False)
    surrogate = 0.0
    fd_checked = 0
    for step, state, t in steps:
        action = guided_eps(model, state, t, inputs.cond, sampler.guidance_scale)
        a = action.detach().requires_grad_(True)
        q = _q_by_hand(frozen, sampler, critic_before, inputs.cond, state, step, a)
        (g,) = torch.autograd.grad(q.sum(), a)
        if fd_checked < 1:  # ∇_a Q itself against a central difference along a random direction
            d = torch.randn(a.shape, generator=torch.Generator().manual_seed(step), dtype=a.dtype)
            with torch.no_grad():
                h = 1e-5
                fd = (
                    _q_by_hand(frozen, sampler, critic_before, inputs.cond, state, step, a + h * d).sum()
                    - _q_by_hand(frozen, sampler, critic_before, inputs.cond, state, step, a - h * d).sum()
                ) / (2 * h)
            assert fd.item() == pytest.approx((g * d).sum().item(), rel=1e-6)
            fd_checked += 1
        surrogate = surrogate - (g * action).flatten(1).sum(1).sum() / len(PROMPTS)
    (surrogate / len(steps)).backward()
    by_hand = [p.grad.clone() for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    assert flat.abs().max() > 0
    # diffusers' DDIM step takes square roots of its float32 ᾱ in float32: agreement to ~1e-8
    # relative in Q, so compare to 1e-5 of the largest entry rather than to float64 precision.
    torch.testing.assert_close(
        flat, torch.cat([g.flatten() for g in by_hand]), rtol=1e-5, atol=1e-5 * flat.abs().max().item()
    )
    assert out.queries == 4 and out.logs["dpg_steps"] == 3


def test_no_gradient_reaches_theta_through_the_critics_denoising_step():
    """Differentiating Q(μ_θ(s)) in θ everywhere (denoiser included) gives another gradient."""
    model, params, sampler, inputs, critic_before, grads, _, steps = _estimator_grads_and_trajectory()
    total = 0.0
    for step, state, t in steps:
        action = guided_eps(model, state, t, inputs.cond, sampler.guidance_scale)
        total = total - _q_by_hand(model, sampler, critic_before, inputs.cond, state, step, action).sum() / len(PROMPTS)
    (total / len(steps)).backward()
    naive = torch.cat([p.grad.flatten() for p in params])
    ours = torch.cat([g.flatten() for g in grads])
    assert not torch.allclose(ours, naive, rtol=1e-3), "the denoising step's θ-dependence leaked into the gradient"


def test_critic_loss_falls_on_a_fixed_batch():
    model, params, sampler, reward, inputs, est = _setup(states=1, guidance=1.0)
    _randomise_critic(est, reward)  # start away from the reward (LoRA B = 0 would start at Q ≈ R)
    for group in est.optimizer.param_groups:
        group["lr"] = 5e-4  # small enough for Adam to descend without overshooting
    losses = []
    for _ in range(8):
        inputs.generator.manual_seed(0)  # the same states every time; θ is never updated
        out = est(inputs)
        est.on_optimizer_step(True)  # as the runner does after the LoRA's update
        losses.append(out.logs["critic_loss"])
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.2 * losses[0], losses


def test_state_dict_round_trip_continues_exactly():
    def run(est, inputs, n):
        for _ in range(n):
            out = est(inputs)
            est.on_optimizer_step(True)
        return out

    *_, inputs, straight = _setup(states=2)
    run(straight, inputs, 3)
    *_, inputs2, first = _setup(states=2)
    run(first, inputs2, 2)
    state = first.state_dict()
    assert any(k.startswith("critic_opt.") for k in state) and any(k.startswith("critic.") for k in state)
    *_, inputs3, resumed = _setup(states=2)
    resumed.load_state_dict(state)  # before the critic exists: applied when it is built
    inputs3.generator.set_state(inputs2.generator.get_state())
    run(resumed, inputs3, 1)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_dpg_refuses_rewards_without_a_network_and_stochastic_samplers():
    model, params, sampler, reward, inputs, est = _setup()
    inputs.reward = LinearReward((1, 3, 64, 64), torch.float64)
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        est(inputs)
    with pytest.raises(ConfigError, match="deterministic sampler"):
        est.check(DDPMSampler(steps=3))
    with pytest.raises(ConfigError, match="min_step=3"):
        DeterministicPolicyGradient(min_step=3).check(DDIMSampler(steps=3))
    with pytest.raises(ConfigError, match="estimator.states"):
        DeterministicPolicyGradient(states=0)


def test_dpg_trains_and_resumes_through_the_runner(tmp_path):
    from safetensors.torch import load_file

    from draft_core import cli

    sets = []
    for o in [
        "model.name=digits",
        "reward.name=digit-classifier",
        "reward.target=8",
        "sampler.steps=3",
        "estimator.name=dpg",
        "estimator.states=1",
        "train.batch_size=2",
        "train.lr=0.01",
        "train.sample_every=0",
        "train.sample_per_prompt=1",
        "train.sample_prompts=[a handwritten digit one]",
        "train.checkpoint_every=1",
    ]:
        sets += ["--set", o]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert (
        cli.main(
            [
                "train",
                "--preset",
                "quickstart",
                "--out",
                str(straight),
                *sets,
                "--set",
                "train.steps=3",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            ["train", "--preset", "quickstart", "--out", str(split), *sets, "--set", "train.steps=2", "--no-progress"]
        )
        == 0
    )
    assert (split / "checkpoints" / "step-000002" / "extra.safetensors").exists()
    assert cli.main(["train", "--resume", str(split), "--set", "train.steps=3", "--no-progress"]) == 0
    a = load_file(straight / "lora" / "pytorch_lora_weights.safetensors")
    b = load_file(split / "lora" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    import json

    rows = [json.loads(r) for r in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("critic_loss" in r for r in rows)
    # The model card shows the command that started the run and the resume's, each as given.
    card = (split / "lora" / "README.md").read_text()
    made_by = card.split("Made by:\n\n```bash\n")[1].split("\n```")[0].splitlines()
    assert [line.split()[:3] for line in made_by] == [["draft", "train", "--preset"], ["draft", "train", "--resume"]]
    assert made_by[1].endswith("--set train.steps=3 --no-progress")
    assert f"draft sample --model digits --lora {split / 'lora'}:1.0 --steps 3 --guidance 7.5 --prompt" in card


def test_critic_gradients_are_averaged_across_processes(tmp_path):
    """Two gloo processes: each ends with the mean of both processes' critic gradients."""
    import torch.multiprocessing as mp
    from dpg_average_worker import average_worker

    mp.spawn(average_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(grads[0], torch.full((2, 3), 1.5))
        assert torch.equal(grads[1], torch.arange(4.0) * 1.5)


class PoisonableReward(PooledLinearReward):
    """A network reward whose chosen calls (1-based) return NaN; its copies (the critic) never do."""

    def __init__(self, nan_at=()) -> None:
        super().__init__(dtype=torch.float32)
        self.nan_at, self.calls, self.origin = set(nan_at), 0, id(self)

    def forward(self, images, prompts=()):
        r = super().forward(images, prompts)
        if id(self) != self.origin:
            return r
        self.calls += 1
        return r * float("nan") if self.calls in self.nan_at else r


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_the_critic_steps_with_the_policy_and_a_skipped_step_leaves_it_alone(tmp_path, grad_accum):
    """A NaN reward in the second optimiser step: the runner skips it, the critic stays exactly
    as it was, and the next step trains normally. The critic steps once per optimiser step,
    whatever train.grad_accum is."""
    from draft_core.config import load_config
    from draft_core.training.components import build_components
    from draft_core.training.runner import Trainer

    sets = [
        "model.name=tiny-random",
        "sampler.steps=3",
        "estimator.name=dpg",
        "estimator.states=1",
        "estimator.critic_rank=2",
        "train.batch_size=2",
        f"train.grad_accum={grad_accum}",
        "train.lr=0.01",
        "train.sample_every=0",
        "lora.rank=2",
        "train.max_nonfinite=3",
    ]
    config = load_config(None, sets, preset="quickstart")
    trainer = Trainer(config, tmp_path / "run", build_components(config), progress=False)
    trainer.setup()
    # One reward call per micro-batch (the trajectory's return); the last micro-batch of step 2 is NaN.
    trainer.c.reward = PoisonableReward(nan_at=[2 * grad_accum])
    est = trainer.c.estimator

    def critic_state():
        return [p.detach().clone() for p in est.critic_params], [s["step"].item() for s in est.optimizer.state.values()]

    first = trainer.train_step()
    assert "skipped" not in first
    params_1, steps_1 = critic_state()
    assert steps_1 and set(steps_1) == {1}  # one critic update for the one optimiser step
    skipped = trainer.train_step()
    assert skipped["skipped"] == "reward"
    params_2, steps_2 = critic_state()
    assert steps_2 == steps_1 and all(torch.equal(a, b) for a, b in zip(params_1, params_2))
    assert all(torch.isfinite(p).all() for p in params_2)
    third = trainer.train_step()
    assert "skipped" not in third and math.isfinite(third["q_mean"]) and math.isfinite(third["loss"])
    params_3, steps_3 = critic_state()
    assert set(steps_3) == {2} and not all(torch.equal(a, b) for a, b in zip(params_2, params_3))
