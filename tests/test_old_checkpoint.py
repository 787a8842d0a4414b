"""A checkpoint written before ``Trainer.state_dict()`` (tests/data/old_checkpoint, made by
tests/data/make_old_checkpoint.py with that code: a DDPO run with stored samples, a weight average and a
learned guidance schedule) still resumes, and its next step is the one that code took, bit for bit."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from old_checkpoint_files import rebuild_optimizer
from safetensors.torch import load_file

from draft_core import cli
from draft_core.config import Config
from draft_core.rundir import RunDir

DATA = Path(__file__).parent / "data" / "old_checkpoint"


def _step2(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The run's LoRA, weight average and guidance schedule after step 2, and step 2's metrics row."""
    out = {f"lora/{k}": v for k, v in load_file(run / "lora" / "pytorch_lora_weights.safetensors").items()}
    out.update(
        {f"lora_ema/{k}": v for k, v in load_file(run / "lora_ema" / "pytorch_lora_weights.safetensors").items()}
    )
    out.update({f"guidance/{k}": v for k, v in load_file(run / "lora" / "sampler_params.safetensors").items()})
    row = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    return out, row


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _resume(tmp_path: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Copy the stored checkpoint's run folder to ``tmp_path / name``, resume it to step 2, return ``_step2``."""
    run = tmp_path / name
    shutil.copytree(DATA, run, ignore=shutil.ignore_patterns("expected_*", "optimizer.*"))
    step1 = run / "checkpoints" / "step-000001"
    rebuild_optimizer(DATA, step1 / "optimizer.pt")  # the repository keeps no pickle
    manifest = json.loads((step1 / "manifest.json").read_text())
    assert (
        hashlib.sha256((step1 / "optimizer.pt").read_bytes()).hexdigest() == manifest["files"]["optimizer.pt"]["sha256"]
    )
    assert cli.main(["train", "--resume", str(run), "--set", "train.steps=2", "--no-progress"]) == 0
    config = RunDir(run).read_config()  # the run folder's config.yaml, typed
    assert isinstance(config, Config) and config.train.ema.decay == 0.8 and config.estimator["name"] == "ddpo"
    return _step2(run)


def test_old_checkpoint_resumes_bit_for_bit(tmp_path):
    tensors, row = _resume(tmp_path, "run")
    expected = load_file(DATA / "expected_step2.safetensors")
    expected_row = json.loads((DATA / "expected_step2.json").read_text())
    assert row["step"] == 2 and row["fresh_samples"] == 0.0  # step 2 trained on the checkpoint's stored samples
    assert row["reward_mean"] == expected_row["reward_mean"]  # the stored samples' rewards, not new ones
    if _same(tensors, expected):
        assert {k: row[k] for k in expected_row} == expected_row
        return
    # A machine whose CPU kernels round differently from the one that wrote the reference: step 2's
    # arithmetic differs in the last bits, and DDPO's clipped ratio (clip_range 1e-4) turns that into
    # visibly different gradients for some weights. There the resume must still be deterministic (a
    # second resume equals the first bit for bit) and land within a small fraction of one Adam step
    # (each weight moves by at most about lr per step) of the reference; a lost optimizer state,
    # weight average or guidance schedule moves weights by whole steps.
    again, _ = _resume(tmp_path, "again")
    assert _same(tensors, again)
    assert tensors.keys() == expected.keys()
    for k, v in expected.items():
        torch.testing.assert_close(
            tensors[k], v, rtol=0, atol=0.05 * expected_row["lr"], msg=lambda m, k=k: f"{k}: {m}"
        )


def _equal(a, b) -> bool:
    """Nested dicts and lists of tensors, equal bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return type(a) is type(b) and a == b


def test_checkpoint_files_and_the_nested_state_map_both_ways():
    """Two processes' files (their rank-prefixed keys, the weight average, learned hyperparameters, an
    estimator number) read into named parts, and written back to the same files."""
    from draft_core.training.checkpoint import TrainingState
    from draft_core.training.state import PARTS, from_checkpoint, to_checkpoint

    t = torch.arange(3.0)
    files = TrainingState(
        step=7,
        lora={"a.lora_A.weight": t},
        optimizer={"state": {}},
        lr_scheduler={"last_epoch": 7},
        rng={"gen_data": t, "torch_cpu": t + 1, "rank1/gen_data": t + 2, "rank1/torch_cpu": t + 3},
        extra={
            "buffer.cursor": torch.tensor(1),
            "rank1/buffer.cursor": torch.tensor(0),
            "rank1/buffer.latents": t,
            "weights_ema.0": t,
            "weights_ema.step": torch.tensor(7),
            "learned_sampling.guidance.weights": t,
        },
        meta={
            "num_processes": 2,
            "nonfinite": {"total": 1, "streak": 0, "first": 3, "by": {"reward": 1}},
            "estimator_numbers": {"buffer.cursor": "int"},
        },
    )
    state = from_checkpoint(files)
    assert tuple(state) == PARTS
    assert _equal(state["rng"], [{"gen_data": t, "torch_cpu": t + 1}, {"gen_data": t + 2, "torch_cpu": t + 3}])
    assert _equal(state["estimator"], [{"buffer.cursor": 1}, {"buffer.cursor": 0, "buffer.latents": t}])
    assert _equal(state["ema"], {"weights_ema.0": t, "weights_ema.step": torch.tensor(7)})
    assert _equal(state["learned"], {"guidance.weights": t}) and state["nonfinite"]["first"] == 3
    again = to_checkpoint(state, "test estimator")
    assert _equal(again.rng, files.rng) and again.meta == files.meta and again.step == 7
    assert _equal(again.extra, files.extra) and _equal(again.lora, files.lora)
