"""Resumable training state, written atomically and checksummed: a crash mid-write never
corrupts the last checkpoint, and a checkpoint damaged afterwards is detected at load.

Layout: ``checkpoints/step-000100/`` holding ``lora.safetensors`` (adapter tensors),
``rng.safetensors`` (generator states, of every process), ``optimizer.pt`` (loaded with
``weights_only=True``), ``extra.safetensors`` (estimator state, when it has any),
``state.json`` (step, LR scheduler, counters) and ``manifest.json`` (the SHA-256 and size
of each of those files, written last); ``checkpoints/latest`` names the newest.

A folder is filled under a temporary name, synced to disk and renamed into place, so
``step-N`` either exists complete or not at all. At load, the newest checkpoint whose
files match its manifest is used; a damaged one is reported and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from draft_core.errors import DraftError
from draft_core.outputs import usual_permissions

LATEST = "latest"
MANIFEST = "manifest.json"


class CheckpointError(DraftError):
    """A checkpoint is missing, damaged, or cannot be used."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint's files do not match its manifest, or cannot be read."""


class UnsafeFile(DraftError):
    """A file holds pickled Python objects beyond tensors; it is never unpickled."""


@dataclass
class TrainingState:
    step: int
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    rng: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable counters (e.g. skipped steps)


def safe_torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)``; a pickle with arbitrary objects is refused, never run."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise UnsafeFile(
            f"'{path}' holds pickled Python objects other than tensors, so draft refuses to load it "
            f"(unpickling can run arbitrary code; draft loads only safetensors files and "
            f"torch.load(weights_only=True)). Re-create the file with safetensors or plain tensors, "
            f"or remove it. ({str(exc).splitlines()[0]})"
        ) from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync folders
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_folder(fill: Callable[[Path], None], final: Path) -> None:
    """Fill a temporary sibling folder with ``fill(tmp)`` and swap it in for ``final``."""
    tmp = final.with_name(f".{final.name}.tmp")
    old = final.with_name(f".{final.name}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        usual_permissions(tmp)  # safetensors writes 0600; others on a shared file system may read a run
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
    except BaseException:  # nothing half-written stays behind; ``final`` is untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(root: Path, state: TrainingState, keep: int = 2) -> Path:
    """Write ``root/step-N`` through a temporary folder and a rename, then prune to ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:06d}"

    def fill(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in state.lora.items()}, tmp / "lora.safetensors")
        save_file({k: v.contiguous() for k, v in state.rng.items()}, tmp / "rng.safetensors")
        if state.extra:
            save_file({k: v.contiguous() for k, v in state.extra.items()}, tmp / "extra.safetensors")
        torch.save(state.optimizer, tmp / "optimizer.pt")
        meta = {"step": state.step, "lr_scheduler": state.lr_scheduler, **state.meta}
        (tmp / "state.json").write_text(json.dumps(meta))
        files = {f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1))

    replace_folder(fill, root / name)
    write_text_atomic(root / LATEST, name + "\n")
    _prune(root, keep, protect=name)
    return root / name


def _prune(root: Path, keep: int, protect: str) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def candidates(root: Path) -> list[Path]:
    """Checkpoint folders, newest first; the one ``latest`` names leads."""
    done = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
    pointer = root / LATEST
    if pointer.exists():
        named = root / pointer.read_text(errors="replace").strip()
        if named in done:
            done.remove(named)
            done.insert(0, named)
    return done


def latest_checkpoint(root: Path) -> Path | None:
    found = candidates(root)
    return found[0] if found else None


def verify(path: Path) -> None:
    """Check every file against the manifest; raise CorruptCheckpoint naming the first mismatch."""
    manifest = path / MANIFEST
    try:
        files = json.loads(manifest.read_text())["files"]
    except FileNotFoundError:
        raise CorruptCheckpoint(f"checkpoint '{path}' has no {MANIFEST} (it was not completely written)") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpoint(f"checkpoint '{path}': {MANIFEST} is unreadable ({exc})") from None
    for name, entry in files.items():
        f = path / name
        if not f.is_file():
            raise CorruptCheckpoint(f"checkpoint '{path}': {name} is missing")
        size = f.stat().st_size
        if size != entry["bytes"]:
            raise CorruptCheckpoint(
                f"checkpoint '{path}': {name} has {size} bytes, the manifest says {entry['bytes']} (truncated?)"
            )
        if _sha256(f) != entry["sha256"]:
            raise CorruptCheckpoint(
                f"checkpoint '{path}': {name} does not match its SHA-256 checksum (the file was changed or damaged)"
            )


def load_checkpoint(path: Path) -> TrainingState:
    """Verify and read one checkpoint folder."""
    verify(path)
    try:
        meta = json.loads((path / "state.json").read_text())
        extra = path / "extra.safetensors"
        optimizer = safe_torch_load(path / "optimizer.pt")
        return TrainingState(
            step=int(meta.pop("step")),
            lora=load_file(path / "lora.safetensors"),
            optimizer=cast(dict[str, Any], optimizer),
            lr_scheduler=meta.pop("lr_scheduler"),
            rng=load_file(path / "rng.safetensors"),
            extra=load_file(extra) if extra.exists() else None,
            meta=meta,
        )
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError, EOFError) as exc:
        raise CorruptCheckpoint(f"checkpoint '{path}' is unreadable ({exc})") from exc


def load_latest(
    root: Path, warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
) -> tuple[Path, TrainingState]:
    """The newest checkpoint under ``root`` that verifies; each damaged one is reported and skipped.

    A file that would need unpickling is an error, not a fallback: it was put there by hand.
    """
    found = candidates(root)
    if not found:
        raise CheckpointError(
            f"no checkpoint in '{root}' to resume from (the run stopped before its first checkpoint)."
        )
    problems = []
    for path in found:
        try:
            state = load_checkpoint(path)
        except CorruptCheckpoint as exc:
            problems.append(str(exc))
            warn(f"[draft] warning: {exc}; trying the previous checkpoint.")
            continue
        return path, state
    raise CheckpointError(
        f"every checkpoint in '{root}' is damaged, so the run cannot be resumed: {'; '.join(problems)}. "
        f"Start a new run (the LoRA in the run's lora/ folder is the last one written)."
    )
