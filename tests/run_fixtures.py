"""A run folder as ``draft train`` writes it, made without training (for the report and push tests)."""

from __future__ import annotations

import json

from draft_core.config import load_config
from draft_core.lora.card import run_card_info, write_model_card

STEPS, SKIPPED, VAL_EVERY, GRID_STEPS = 30, 7, 10, (0, 10, 20, 30)
HOSTILE = "</script><script>window.injected = 1</script>"  # a prompt that must stay text


def make_run(root, name="run", slope=0.02, model="digits", lora=False):
    """A run folder as the runner writes it: 30 steps (step 7 skipped), val/ink-coverage every 10,
    4 sample grids (steps 0, 10, 20, 30) and 3 validation grids.

    lora: also a real LoRA file (random, on tiny-random's UNet) in ``lora/``.
    """
    from PIL import Image

    run = root / name
    (run / "samples").mkdir(parents=True)
    overrides = [
        f"train.steps={STEPS}",
        f"train.sample_prompts=[a handwritten digit one, '{HOSTILE}']",
        f"model.name={model}",
    ]
    load_config(preset="quickstart", overrides=overrides).dump(run / "config.yaml")
    rows = []
    for s in range(1, STEPS + 1):
        if s == SKIPPED:
            rows.append(
                {
                    "step": s,
                    "skipped": "reward",
                    "reason": "non-finite reward values (NaN or inf)",
                    "reward_mean": None,
                    "lr": 1e-3,
                }
            )
            continue
        row = {
            "step": s,
            "reward_mean": -1.0 + slope * s,
            "reward_std": 0.1,
            "loss": 1.0 - slope * s,
            "grad_norm": 0.5,
            "lr": 1e-3,
            "seconds": 1.5,
            "kl": 0.01 * s,
        }
        if s % VAL_EVERY == 0:
            row["val/ink-coverage"] = 0.2 + 0.001 * s
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for i, s in enumerate(GRID_STEPS):  # each grid a distinct colour
        Image.new("RGB", (70, 36), (60 * i, 255 - 60 * i, 90)).save(run / "samples" / f"step-{s:06d}.png")
        if s:  # validation grids, as train.validation draws them
            Image.new("RGB", (36, 36), (90, 60 * i, 255 - 60 * i)).save(run / "samples" / f"val-step-{s:06d}.png")
    if lora:
        save_random_lora(run / "lora")
    write_model_card(run / "lora", run_card_info(run, command="draft train --preset quickstart"))
    return run


_LORA: dict[str, bytes] = {}  # one random LoRA file, made once per test process


def save_random_lora(folder):
    from pathlib import Path

    from draft_core.lora import WEIGHT_NAME

    if not _LORA:
        import tempfile

        import torch

        from draft_core.lora import add_lora, save_lora
        from draft_core.models.tiny import build_tiny_random

        unet = build_tiny_random().unet
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            add_lora(unet, rank=2, init=False)
        with tempfile.TemporaryDirectory() as tmp:
            _LORA["bytes"] = save_lora(unet, tmp).read_bytes()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / WEIGHT_NAME).write_bytes(_LORA["bytes"])
    return folder / WEIGHT_NAME
