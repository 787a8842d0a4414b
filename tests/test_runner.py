"""The training recipe end to end on tiny-random: run folder, exact resume, failures keep work."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from draft_core import cli
from draft_core.config import load_config
from draft_core.training.components import build_components
from draft_core.training.runner import Trainer, lr_factor
from draft_core.training.signals import Interrupted

FAST = [
    "model.name=tiny-random",
    "reward.name=jpeg-compressibility",
    "prompts.source=animals",
    "sampler.steps=3",
    "estimator.name=draft-k",
    "estimator.k=2",
    "train.batch_size=2",
    "train.lr=0.01",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat, a dog]",
    "lora.rank=2",
]


def run_cli(*argv) -> int:
    return cli.main(["train", *argv, "--no-progress"])


def lora_of(run_dir):
    return load_file(run_dir / "lora" / "pytorch_lora_weights.safetensors")


def metrics_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_lora(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_folder_has_everything(tmp_path):
    out = tmp_path / "run"
    overrides = [o for o in FAST if not o.startswith("estimator.")]
    overrides += [
        "train.steps=4",
        "train.sample_every=2",
        "train.checkpoint_every=2",
        "estimator={name: draft-lv, n: 2}",
    ]
    assert run_cli("--preset", "quickstart", "--out", str(out), *sum((["--set", o] for o in overrides), [])) == 0
    for name in [
        "config.yaml",
        "metrics.jsonl",
        "reward_curve.png",
        "lora/pytorch_lora_weights.safetensors",
        "samples/step-000000.png",
        "samples/step-000002.png",
        "samples/step-000004.png",
        "samples/before_after.png",
        "checkpoints/latest",
        "checkpoints/step-000004/state.json",
        "report.html",
    ]:
        assert (out / name).exists(), name
    rows = metrics_of(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ["reward_mean", "reward_std", "grad_norm", "lr", "seconds", "loss", "reward_queries"]:
        assert all(isinstance(r[key], float | int) for r in rows), key
    assert rows[0]["reward_queries"] == 2 * 3  # batch 2, DRaFT-LV n=2: three reward queries per image
    # The resolved config is a valid config that reproduces this run's settings.
    saved = load_config(out / "config.yaml")
    assert saved.estimator == {"name": "draft-lv", "n": 2} and saved.sampler["steps"] == 3
    # The LoRA trained: it moved away from its zero-initialised B factors.
    assert any(v.abs().sum() > 0 for k, v in lora_of(out).items() if "lora_B" in k)
    card = (out / "lora" / "README.md").read_text()  # the model card, refreshed with the LoRA
    assert "base_model: tiny-random" in card and "| steps | 4 |" in card and "draft-lv" in card
    # The report page, rewritten with the last grid: every grid, every step, the final model card.
    report = (out / "report.html").read_text()
    data = json.loads(report.split('id="draft-report-data">')[1].split("</script>")[0])
    assert [g["step"] for g in data["runs"][0]["grids"]] == [0, 2, 4]
    assert data["charts"]["reward"]["series"][0]["x"] == [1, 2, 3, 4] and "<td>steps</td><td>4</td>" in report


def test_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    sets = sum((["--set", o] for o in FAST + ["train.sample_every=0", "train.checkpoint_every=2"]), [])
    assert run_cli("--preset", "quickstart", "--out", str(straight), *sets, "--set", "train.steps=4") == 0
    assert run_cli("--preset", "quickstart", "--out", str(split), *sets, "--set", "train.steps=2") == 0
    assert run_cli("--resume", str(split), "--set", "train.steps=4") == 0
    assert_same_lora(lora_of(straight), lora_of(split))
    a, b = metrics_of(straight), metrics_of(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["reward_mean"] for r in a] == [r["reward_mean"] for r in b]


def _trainer(out, overrides):
    config = load_config(None, FAST + overrides, preset="quickstart")
    trainer = Trainer(config, out, build_components(config), progress=False)
    trainer.setup()
    return trainer


class _FailOn:
    """Wraps a reward: on call number `at`, raise (or deliver a signal to this process)."""

    def __init__(self, reward, at: int, action) -> None:
        self.reward, self.at, self.action, self.calls = reward, at, action, 0

    def __call__(self, images, prompts):
        self.calls += 1
        if self.calls == self.at:
            self.action()
        return self.reward(images, prompts)


@pytest.mark.parametrize("how", ["exception", "sigint", "sigterm"])
def test_failure_or_interrupt_keeps_work_and_resumes_exactly(tmp_path, how):
    base = ["train.steps=4", "train.sample_every=0", "train.checkpoint_every=100"]
    reference = _trainer(tmp_path / "ref", base)
    reference.train()

    out = tmp_path / "run"
    trainer = _trainer(out, base)

    def boom():
        raise RuntimeError("simulated crash")

    actions = {
        "exception": boom,
        "sigint": lambda: os.kill(os.getpid(), signal.SIGINT),
        "sigterm": lambda: os.kill(os.getpid(), signal.SIGTERM),
    }
    # One reward call per step with draft-k: the action fires during step 3.
    trainer.c.reward = _FailOn(trainer.c.reward, 3, actions[how])
    expected_error = RuntimeError if how == "exception" else Interrupted
    with pytest.raises(expected_error):
        trainer.train()
    kept = json.loads(
        (out / "checkpoints" / "step-00000{}".format(2 if how == "exception" else 3) / "state.json").read_text()
    )
    # A crash loses the step in progress; a signal lets the step finish first.
    assert kept["step"] == (2 if how == "exception" else 3)
    assert run_cli("--resume", str(out)) == 0
    assert_same_lora(lora_of(tmp_path / "ref"), lora_of(out))
    assert [r["step"] for r in metrics_of(out)] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "estimator", [[], ["estimator={name: draft-lv, n: 1}"]], ids=["draft-k", "draft-lv-own-backward"]
)
def test_gradient_accumulation_matches_the_larger_batch(tmp_path, estimator):
    """Two micro-batches of 1 draw the same prompts and noise as one batch of 2; the averaged
    gradient the optimiser sees must be the same (also when the estimator runs its own
    backward passes through StepInputs.backward, as draft-lv does)."""
    seen = {}
    for name, extra in {"one": ["train.batch_size=2"], "two": ["train.batch_size=1", "train.grad_accum=2"]}.items():
        trainer = _trainer(tmp_path / name, ["train.steps=1", "train.sample_every=0"] + estimator + extra)
        trainer.sample_grid = lambda tag: None
        step = trainer.optimizer.step

        def capture(*args, _t=trainer, _name=name, _step=step, **kwargs):
            seen[_name] = torch.cat([p.grad.flatten() for p in _t.params])
            return _step(*args, **kwargs)

        trainer.optimizer.step = capture
        trainer.train()
    assert seen["one"].abs().max() > 0
    # Batched and unbatched float32 kernels differ by rounding; a wrong accumulation (a sum, or
    # one micro-batch only) would be off by a factor near 2.
    torch.testing.assert_close(seen["two"], seen["one"], rtol=1e-3, atol=1e-4 * seen["one"].abs().max().item())


def test_sqrt_lr_decay_follows_the_paper():
    f = lr_factor("sqrt")
    assert [f(i) for i in (0, 99)] == [1.0, 1.0]  # min(10·step^-0.5, 1) with step counted from 1
    assert f(399) == pytest.approx(0.5)
    assert lr_factor("none")(10_000) == 1.0
