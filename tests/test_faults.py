"""Bad luck and bad plugins during training: non-finite rewards and gradients are skipped and
counted, too many in a row stop the run; a raising reward plugin stops it with a message that
names the plugin and its distribution; checkpoints are checksummed, a damaged one is detected
and the previous one used; pickles are refused."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file

from draft_core import cli, hookimpl
from draft_core.lora import LoraSpec, apply_loras
from draft_core.plugins import discovery, load_registry
from draft_core.training.checkpoint import (
    MANIFEST,
    CheckpointError,
    TrainingState,
    UnsafeFile,
    _sha256,
    load_checkpoint,
    load_latest,
    safe_torch_load,
    save_checkpoint,
    verify,
)
from draft_rewards.jpeg import jpeg_reconstruction_error

FAST = [
    "model.name=tiny-random",
    "prompts.source=animals",
    "sampler.steps=3",
    "estimator.name=draft-k",
    "estimator.k=1",
    "train.batch_size=1",
    "train.lr=0.01",
    "train.sample_every=0",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat]",
    "lora.rank=2",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=5",
]


class FlakyReward:
    """JPEG compressibility, except on chosen calls (1-based): NaN values, a NaN gradient
    with finite values, or an exception."""

    def __init__(self, nan_at: list[int] = (), bad_grad_at: list[int] = (), raise_at: int = 0) -> None:
        self.nan_at, self.bad_grad_at, self.raise_at, self.calls = list(nan_at), list(bad_grad_at), raise_at, 0

    def __call__(self, images, prompts):
        self.calls += 1
        if self.calls == self.raise_at:
            raise ValueError("the scoring service returned HTTP 503")
        r = -jpeg_reconstruction_error(images)
        if self.calls in self.nan_at:
            return r * float("nan")
        if self.calls in self.bad_grad_at:
            return r + (images - images.detach()).abs().sqrt().mean(dim=(1, 2, 3))  # value + 0, gradient inf·0
        return r


class FlakyPlugin:
    @hookimpl
    def register_rewards(self, register):
        register("flaky", FlakyReward)


@pytest.fixture
def flaky(monkeypatch):
    """The installed plugins plus 'flaky' from the (fake) distribution draft-flaky-test 9.9."""
    monkeypatch.setattr(discovery, "_cache", None)  # restored afterwards
    load_registry().register_plugin(FlakyPlugin(), "flaky_plugin", distribution="draft-flaky-test", version="9.9")


def train(out, *sets, resume=False):
    args = ["--resume", str(out)] if resume else ["--preset", "quickstart", "--out", str(out)]
    for s in ([] if resume else FAST) + list(sets):
        args += ["--set", s]
    return cli.main(["train", *args, "--no-progress"])


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def ckpt_lora(out, step):
    return load_file(out / "checkpoints" / f"step-{step:06d}" / "lora.safetensors")


def test_a_non_finite_reward_skips_the_update_and_the_run_goes_on(tmp_path, flaky, capsys):
    out = tmp_path / "run"
    assert train(out, "reward={name: flaky, nan_at: [2]}", "train.steps=3", "train.max_nonfinite=2") == 0
    r = rows(out)
    assert [x["step"] for x in r] == [1, 2, 3]
    assert r[1]["skipped"] == "reward" and r[1]["reward_mean"] is None and r[1]["nonfinite_total"] == 1
    assert "skipped" not in r[0] and "skipped" not in r[2]
    one, two, three = (ckpt_lora(out, s) for s in (1, 2, 3))
    assert all(torch.equal(one[k], two[k]) for k in one)  # no update at step 2
    assert any(not torch.equal(two[k], three[k]) for k in two)  # step 3 updated again
    assert json.loads((out / "checkpoints/step-000003/state.json").read_text())["nonfinite"]["total"] == 1
    assert (
        "step 2: the reward (reward 'flaky' (plugin 'flaky_plugin' from distribution draft-flaky-test 9.9)) "
        "produced non-finite reward values"
    ) in capsys.readouterr().err


def test_non_finite_values_in_a_row_stop_the_run_and_keep_the_last_checkpoint(tmp_path, flaky, capsys):
    out = tmp_path / "run"
    code = train(out, "reward={name: flaky, nan_at: [2, 3, 4]}", "train.steps=5", "train.max_nonfinite=2")
    err = capsys.readouterr().err
    assert code == 2
    assert "step 3: the reward (reward 'flaky' (plugin 'flaky_plugin' from distribution draft-flaky-test 9.9))" in err
    assert "2 skipped updates in a row (steps 2-3, train.max_nonfinite=2)" in err and "--resume" in err
    assert "Traceback" not in err
    # Step 2's checkpoint (written after its skipped update) is the last; step 3 wrote none.
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000001", "step-000002"]
    verify(out / "checkpoints" / "step-000002")
    lora = ckpt_lora(out, 2)
    assert all(torch.isfinite(v).all() for v in lora.values())
    assert all(torch.equal(lora[k], ckpt_lora(out, 1)[k]) for k in lora)


def test_a_non_finite_gradient_is_blamed_on_the_estimator(tmp_path, flaky, capsys):
    out = tmp_path / "run"
    code = train(out, "reward={name: flaky, bad_grad_at: [2]}", "train.steps=2", "train.max_nonfinite=1")
    err = capsys.readouterr().err
    assert code == 2
    assert "step 2: the estimator (estimator 'draft-k' (plugin 'draft_estimators'" in err and "draft-k(k=1, kl=" in err
    assert "produced non-finite gradients" in err
    assert rows(out)[-1] == {**rows(out)[-1], "skipped": "estimator", "reason": "non-finite gradients"}


def test_a_raising_reward_plugin_stops_with_a_checkpoint_and_names_its_distribution(tmp_path, flaky, capsys):
    out = tmp_path / "run"
    code = train(out, "reward={name: flaky, raise_at: 3}", "train.steps=4", "train.checkpoint_every=2")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (
        "step 3: reward 'flaky' (plugin 'flaky_plugin' from distribution draft-flaky-test 9.9) raised "
        "ValueError: the scoring service returned HTTP 503 (at test_faults.py:"
    ) in err
    assert "the state after step 2 (the last completed step) is checkpointed" in err
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000002"
    # The plugin is fixed (no more failures): the run resumes from step 2 and finishes.
    assert train(out, "reward.raise_at=0", resume=True) == 0
    assert [x["step"] for x in rows(out)] == [1, 2, 3, 4]


# -- checkpoints on disk --------------------------------------------------------------------


def _state(step: int) -> TrainingState:
    g = torch.Generator().manual_seed(step)
    return TrainingState(
        step=step,
        lora={"a": torch.randn(4, 3, generator=g)},
        optimizer={"state": {0: {"m": torch.ones(3) * step}}, "param_groups": []},
        lr_scheduler={"last_epoch": step},
        rng={"gen_data": g.get_state()},
        meta={"num_processes": 1},
    )


def test_checkpoints_are_checksummed_and_only_the_last_n_are_kept(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(1, 5):
        save_checkpoint(root, _state(step), keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000003", "step-000004"]
    manifest = json.loads((root / "step-000004" / MANIFEST).read_text())["files"]
    assert set(manifest) == {"lora.safetensors", "rng.safetensors", "optimizer.pt", "state.json"}
    assert manifest["lora.safetensors"]["sha256"] == _sha256(root / "step-000004" / "lora.safetensors")
    path, state = load_latest(root)
    assert path.name == "step-000004" and torch.equal(state.lora["a"], _state(4).lora["a"])
    assert state.meta == {"num_processes": 1} and state.lr_scheduler == {"last_epoch": 4}


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_a_damaged_checkpoint_is_detected_and_the_previous_one_used(tmp_path, damage):
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        save_checkpoint(root, _state(step), keep=2)
    f = root / "step-000002" / "lora.safetensors"
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit
    elif damage == "delete":
        f.unlink()
    else:
        (root / "step-000002" / MANIFEST).write_text("{not json")
    warnings = []
    path, state = load_latest(root, warn=warnings.append)
    assert path.name == "step-000001" and state.step == 1
    assert len(warnings) == 1 and "step-000002" in warnings[0] and "trying the previous checkpoint" in warnings[0]
    # Every checkpoint damaged: a clear error, not a traceback from deep inside safetensors.
    (root / "step-000001" / "rng.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="every checkpoint in .* is damaged, so the run cannot be resumed"):
        load_latest(root, warn=warnings.append)


def test_a_pickle_in_a_checkpoint_is_refused_even_with_a_matching_manifest(tmp_path):
    root = tmp_path / "checkpoints"
    path = save_checkpoint(root, _state(1))
    # A pickle that would run code when loaded, planted with a manifest rewritten to match.
    (path / "optimizer.pt").write_bytes(pickle.dumps(_Evil()))
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"]["optimizer.pt"] = {
        "sha256": _sha256(path / "optimizer.pt"),
        "bytes": (path / "optimizer.pt").stat().st_size,
    }
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UnsafeFile, match="holds pickled Python objects other than tensors, so draft refuses"):
        load_checkpoint(path)
    assert not _Evil.ran


class _Evil:
    ran = False

    def __reduce__(self):
        return (_mark, ())


def _mark():
    _Evil.ran = True


def test_a_pickled_lora_file_is_refused(tmp_path):
    bad = tmp_path / "lora.bin"
    torch.save({"unet.down.lora_A.weight": torch.zeros(2, 2), "note": _Evil()}, bad)
    with pytest.raises(UnsafeFile, match="lora.bin' holds pickled Python objects"):
        apply_loras(None, [LoraSpec.parse(str(bad))])  # refused before any model is touched
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2)}, plain)
    assert torch.equal(safe_torch_load(plain)["w"], torch.ones(2))  # tensors alone load fine


def test_resume_skips_a_damaged_latest_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["reward.name=jpeg-compressibility", "train.steps=2"]
    assert train(out, *sets) == 0
    f = out / "checkpoints" / "step-000002" / "optimizer.pt"
    f.write_bytes(f.read_bytes()[:100])
    capsys.readouterr()
    assert train(out, "train.steps=3", resume=True) == 0
    err = capsys.readouterr().err
    assert "optimizer.pt has 100 bytes, the manifest says" in err and "resumed from" in err and "step-000001" in err
    assert [x["step"] for x in rows(out)] == [1, 2, 3]
