"""A checkpoint written before ``Trainer.state_dict()`` (tests/data/old_checkpoint, made by
tests/data/make_old_checkpoint.py with that code: a DDPO run with stored samples, a weight average and a
learned guidance schedule) still resumes, and its next step is the one that code took, bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from draft_core import cli

DATA = Path(__file__).parent / "data" / "old_checkpoint"


def _step2(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The run's LoRA, weight average and guidance schedule after step 2, and step 2's metrics row."""
    out = {f"lora/{k}": v for k, v in load_file(run / "lora" / "pytorch_lora_weights.safetensors").items()}
    out.update({f"lora_ema/{k}": v for k, v in load_file(run / "lora_ema" / "pytorch_lora_weights.safetensors").items()})
    out.update({f"guidance/{k}": v for k, v in load_file(run / "lora" / "sampler_params.safetensors").items()})
    row = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    return out, row


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_old_checkpoint_resumes_bit_for_bit(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(DATA, run, ignore=shutil.ignore_patterns("expected_*"))
    assert cli.main(["train", "--resume", str(run), "--set", "train.steps=2", "--no-progress"]) == 0
    tensors, row = _step2(run)
    expected = load_file(DATA / "expected_step2.safetensors")
    expected_row = json.loads((DATA / "expected_step2.json").read_text())
    assert row["step"] == 2 and row["fresh_samples"] == 0.0  # step 2 trained on the checkpoint's stored samples
    if _same(tensors, expected):
        assert {k: row[k] for k in expected_row} == expected_row
        return
    # Another machine rounds differently from the one that wrote the reference: there a run from scratch must
    # differ from the reference too, the resumed run must equal it bit for bit, and both stay near the reference.
    straight = tmp_path / "straight"
    config = run / "config.yaml"
    assert cli.main(["train", str(config), "--out", str(straight), "--set", "train.steps=2", "--no-progress"]) == 0
    reference, _ = _step2(straight)
    assert not _same(reference, expected) and _same(tensors, reference)
    for k, v in expected.items():
        torch.testing.assert_close(tensors[k], v, rtol=1e-4, atol=1e-6)
