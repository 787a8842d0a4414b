"""The stored old checkpoint keeps no pickle in the repository: its ``optimizer.pt`` (what
``torch.save`` wrote for AdamW's state dict) is kept as ``optimizer.safetensors`` (the tensors) plus
``optimizer.json`` (the rest, with each tensor's place), and rebuilt with ``torch.save`` in a test's
run folder. The rebuilt file is byte for byte the original: the checkpoint's manifest, which holds the
original's SHA-256, is checked when the run resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSOR = "__tensor__"


def split_optimizer(pt: Path, folder: Path) -> None:
    """``pt`` (read with ``weights_only=True``) -> ``folder``/optimizer.safetensors and optimizer.json."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: Any, key: str) -> Any:
        if torch.is_tensor(obj):
            tensors[key] = obj
            return {TENSOR: key}
        if isinstance(obj, dict):
            return {"dict": [[walk(k, f"{key}/k{i}"), walk(v, f"{key}/{i}")] for i, (k, v) in enumerate(obj.items())]}
        if isinstance(obj, (list, tuple)):
            return {type(obj).__name__: [walk(v, f"{key}/{i}") for i, v in enumerate(obj)]}
        return obj

    layout = walk(torch.load(pt, weights_only=True), "optimizer")
    save_file(tensors, folder / "optimizer.safetensors")
    (folder / "optimizer.json").write_text(json.dumps(layout) + "\n")


def rebuild_optimizer(folder: Path, pt: Path) -> None:
    """The inverse of ``split_optimizer``: write ``pt`` with ``torch.save``."""
    tensors = load_file(folder / "optimizer.safetensors")
    tuples: dict[tuple, tuple] = {}  # one object per distinct tuple: the param groups shared their betas

    def build(node: Any) -> Any:
        if isinstance(node, dict) and TENSOR in node:
            return tensors[node[TENSOR]].clone()  # its own storage, as torch.load gave the original
        if isinstance(node, dict) and "dict" in node:
            return {build(k): build(v) for k, v in node["dict"]}
        if isinstance(node, dict) and "list" in node:
            return [build(v) for v in node["list"]]
        if isinstance(node, dict) and "tuple" in node:
            value = tuple(build(v) for v in node["tuple"])
            return tuples.setdefault(value, value)
        # one object per distinct string, as in the state dict that was saved (the pickle refers back to it)
        return sys.intern(node) if isinstance(node, str) else node

    torch.save(build(json.loads((folder / "optimizer.json").read_text())), pt)
