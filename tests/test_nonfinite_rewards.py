"""A reward that returns NaN on chosen calls, for each estimator that keeps rewards (ddpo's
per-prompt statistics and stored batches, grpo's stored groups, DRaFT-LV's re-noised copies,
dpg's critic): the bad values never enter the estimator's state or a checkpoint, the batch
costs one skipped update (blamed on the reward, by name) and a fresh one is sampled, and a
run resumed after the reward is mended continues."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from model_fixtures import PooledLinearReward, step_inputs, tiny_with_lora
from safetensors.torch import load_file
from test_faults import flaky, rows, train  # noqa: F401  (flaky: the fixture registering reward 'flaky')

from draft_core.samplers.ddim import DDIMSampler
from draft_estimators import DDPO
from draft_estimators.advantages import PerPromptStatTracker
from draft_estimators.dpg import DeterministicPolicyGradient

POLICY = ["sampler={name: ddim, steps: 2, eta: 1.0}", "train.batch_size=2", "train.max_nonfinite=2"]
FLAKY = "reward 'flaky' (plugin 'flaky_plugin' from distribution draft-flaky-test 9.9)"


class NanOn:
    """Wraps a reward; returns NaN values on the chosen calls (1-based)."""

    def __init__(self, reward, nan_at):
        self.reward, self.nan_at, self.calls = reward, set(nan_at), 0

    def __call__(self, images, prompts):
        self.calls += 1
        r = self.reward(images, prompts)
        return r * float("nan") if self.calls in self.nan_at else r


def test_the_per_prompt_statistics_never_take_a_non_finite_reward():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=1)
    adv = tracker.update(["a", "a", "b"], torch.tensor([1.0, float("nan"), float("inf")]))
    assert list(tracker.stats["a"]) == [1.0] and "b" not in tracker.stats
    assert adv[0] == 0 and adv[1:].isnan().all()
    # A checkpoint from before the fix kept NaN in a history: loading it drops them.
    poisoned = tracker.state_dict()
    poisoned["tracker.values"][0, 1] = float("nan")
    poisoned["tracker.counts"][0] = 2
    tracker.load_state_dict(poisoned)
    assert list(tracker.stats["a"]) == [1.0]
    assert torch.isfinite(tracker.update(["a"], torch.tensor([3.0]))).all()


def test_ddpo_drops_a_batch_with_a_nan_reward_and_samples_afresh_at_the_next_call():
    model, _ = tiny_with_lora(torch.float32)
    sampler = DDIMSampler(steps=2, eta=1.0)
    reward = NanOn(lambda images, prompts: images.mean(dim=(1, 2, 3)), nan_at=[2])
    inputs = step_inputs(model, sampler, reward, ["a cat", "a dog", "a cat"])
    est = DDPO(minibatches=3, inner_epochs=2, stat_min_count=1)  # one batch serves 6 calls
    first = est(inputs)
    assert first.queries == 1 and torch.isfinite(first.reward).all()
    history = {p: list(v) for p, v in est.tracker.stats.items()}
    assert est(inputs).queries == 0  # mid-buffer: the stored batch (minibatch 2 of 6)
    est.buffer["cursor"].fill_(6)  # used up: the next call samples; its reward call returns NaN
    bad = est(inputs)
    assert bad.reward.isnan().all() and bad.loss.isnan() and bad.queries == 1
    assert est.buffer is None and not any(k.startswith("buffer.") for k in est.state_dict())
    assert {p: list(v) for p, v in est.tracker.stats.items()} == history  # nothing of the dropped batch kept
    fresh = est(inputs)  # the next call samples a new batch instead of reusing the poisoned one
    assert fresh.queries == 1 and torch.isfinite(fresh.reward).all() and torch.isfinite(fresh.loss)
    assert reward.calls == 3
    # A checkpoint written before this fix, mid-buffer, with a poisoned batch: loading it drops the batch.
    state = est.state_dict()
    state["buffer.rewards"][0] = float("nan")
    state["buffer.advantages"][0] = float("nan")
    again = DDPO(minibatches=3, inner_epochs=2, stat_min_count=1)
    again.load_state_dict(state)
    assert again.buffer is None and again.tracker.stats.keys() == est.tracker.stats.keys()


def test_ddpo_one_nan_batch_costs_one_skipped_step_and_no_checkpoint_keeps_it(tmp_path, flaky, capsys):  # noqa: F811
    out = tmp_path / "run"
    sets = [*POLICY, "estimator={name: ddpo, minibatches: 2, stat_min_count: 1}", "reward={name: flaky, nan_at: [2]}"]
    # Batches are sampled at steps 1, 3, 4: step 3's reward call returns NaN. Reusing that batch
    # at step 4 would be a second skip in a row, which train.max_nonfinite=2 stops.
    assert train(out, *sets, "train.steps=4") == 0
    r = rows(out)
    assert [x.get("skipped") for x in r] == [None, None, "reward", None]
    assert r[3]["fresh_samples"] == 1.0 and math.isfinite(r[3]["loss"])
    err = capsys.readouterr().err
    assert f"step 3: the reward ({FLAKY}) produced non-finite reward values" in err
    extra = load_file(out / "checkpoints" / "step-000003" / "extra.safetensors")
    assert not any(k.startswith("buffer.") for k in extra)  # the skipped step's checkpoint holds no poisoned batch
    counts = extra["tracker.counts"].tolist()
    assert all(torch.isfinite(extra["tracker.values"][i, :n]).all() for i, n in enumerate(counts))
    assert sum(counts) == 2  # step 1's two rewards; nothing of step 3's batch
    extra = load_file(out / "checkpoints" / "step-000004" / "extra.safetensors")
    assert int(extra["buffer.cursor"]) == 1 and torch.isfinite(extra["buffer.rewards"]).all()  # mid-buffer, clean


def test_grpo_stopped_by_a_nan_reward_resumes_once_the_reward_is_mended(tmp_path, flaky, capsys):  # noqa: F811
    out = tmp_path / "run"
    sets = [
        *POLICY,
        "estimator={name: grpo, group_size: 2, minibatches: 2}",
        "reward={name: flaky, nan_at: [2]}",
        "train.max_nonfinite=1",
        "train.steps=4",
    ]
    assert train(out, *sets) == 2  # batches at steps 1 and 3; step 3's is NaN and one skip stops the run
    err = capsys.readouterr().err
    assert f"step 3: the reward ({FLAKY}) produced non-finite reward values" in err
    assert "Check the reward for inputs where it returns NaN or inf" in err and "train.lr" not in err
    assert "Traceback" not in err
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert train(out, "reward.nan_at=[]", resume=True) == 0
    r = rows(out)
    assert [x["step"] for x in r] == [1, 2, 3, 4] and not any("skipped" in x for x in r)
    assert r[2]["fresh_samples"] == 1.0


def test_a_nan_from_a_draft_lv_copy_is_the_rewards_fault(tmp_path, flaky, capsys):  # noqa: F811
    out = tmp_path / "run"
    # Two reward calls a step (the sample, one re-noised copy): call 4 is step 2's copy.
    assert (
        train(
            out,
            "estimator={name: draft-lv, n: 1}",
            "reward={name: flaky, nan_at: [4]}",
            "train.steps=3",
            "train.max_nonfinite=2",
            "sampler.steps=2",
        )
        == 0
    )
    r = rows(out)
    assert r[1]["skipped"] == "reward" and r[1]["reason"] == "non-finite reward values (NaN or inf)"
    assert "skipped" not in r[0] and "skipped" not in r[2]
    err = capsys.readouterr().err
    assert f"step 2: the reward ({FLAKY}) produced non-finite reward values" in err
    assert "the estimator" not in err


def test_dpg_critic_ignores_a_step_whose_reward_was_nan():
    model, params = tiny_with_lora(torch.float32)
    sampler = DDIMSampler(steps=2)
    reward = PooledLinearReward()
    inputs = step_inputs(model, sampler, reward, ["a cat", "a dog"])
    est = DeterministicPolicyGradient(states=1, critic_rank=2, critic_lr=1e-2)

    def step(inputs, applied):  # as the runner does: backward, then the optimiser step's hook
        out = est(inputs)
        if applied:
            out.loss.backward()
        est.on_optimizer_step(applied)
        return out

    assert torch.isfinite(step(inputs, True).reward).all()
    before = {k: v.clone() for k, v in est.state_dict().items()}
    bad = step(replace(inputs, reward=NanOn(reward, nan_at=[1])), False)  # the runner skips this update
    assert bad.reward.isnan().all()
    after = est.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert step(inputs, True).logs["critic_loss"] >= 0
    assert all(torch.isfinite(v).all() for v in est.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in est.state_dict().items())
