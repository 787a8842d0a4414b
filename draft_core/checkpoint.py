"""Resumable training state, written atomically: a crash mid-write never corrupts the last checkpoint.

Layout: ``checkpoints/step-000100/`` holding ``lora.safetensors`` (adapter tensors),
``rng.safetensors`` (generator states), ``optimizer.pt`` (loaded with
``weights_only=True``), ``extra.safetensors`` (estimator state, when it has any) and
``state.json`` (step, LR scheduler); ``checkpoints/latest`` names the newest.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from draft_core.errors import DraftError

LATEST = "latest"


@dataclass
class TrainingState:
    step: int
    lora: dict[str, torch.Tensor]
    optimizer: dict
    lr_scheduler: dict
    rng: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor] | None = None


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(root: Path, state: TrainingState, keep: int = 2) -> Path:
    """Write ``root/step-N`` through a temporary folder and a rename, then prune to ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:06d}"
    final = root / name
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in state.lora.items()}, tmp / "lora.safetensors")
    save_file({k: v.contiguous() for k, v in state.rng.items()}, tmp / "rng.safetensors")
    if state.extra:
        save_file({k: v.contiguous() for k, v in state.extra.items()}, tmp / "extra.safetensors")
    torch.save(state.optimizer, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": state.step, "lr_scheduler": state.lr_scheduler}))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(root / LATEST, name + "\n")
    _prune(root, keep, protect=name)
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if (candidate / "state.json").exists():
            return candidate
    # The pointer is written last; fall back to the newest complete folder.
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").exists())
    return done[-1] if done else None


def load_checkpoint(path: Path) -> TrainingState:
    try:
        meta = json.loads((path / "state.json").read_text())
        extra = path / "extra.safetensors"
        return TrainingState(
            step=int(meta["step"]),
            lora=load_file(path / "lora.safetensors"),
            optimizer=torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"),
            lr_scheduler=meta["lr_scheduler"],
            rng=load_file(path / "rng.safetensors"),
            extra=load_file(extra) if extra.exists() else None,
        )
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise DraftError(f"checkpoint '{path}' is incomplete or unreadable ({exc}); delete it to resume from an older one.") from exc
