"""The remote reward's wire format: one safetensors blob per request and per answer, never pickle.

A message is a safetensors file held in memory (tensors with their shapes and dtypes in its JSON
header) whose ``__metadata__`` carries the rest as JSON text under ``"draft"``: the prompts of a
request, an answer's error. safetensors keeps float64 as float64, so a reward scored over the
wire in float64 matches the in-process one to the last bit.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import torch
from safetensors.torch import load, save

from draft_core.errors import DraftError

CONTENT_TYPE = "application/vnd.draft.safetensors"
FORMAT = 1


class WireError(DraftError):
    """A message that is not a draft reward message (garbage, truncated, the wrong fields)."""


def pack(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """Tensors (moved to the CPU, made contiguous) and JSON-serialisable ``meta`` as one blob."""
    body = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return save(body, metadata={"draft": json.dumps({"format": FORMAT, **meta})})


def unpack(data: bytes, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a blob; WireError naming ``what`` (e.g. "the reward server's answer") otherwise."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        meta = json.loads(header["__metadata__"]["draft"])
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {FORMAT}")
        return load(data), meta
    except Exception as exc:  # anything unreadable is the same problem: not our message
        start = data[:60]
        raise WireError(
            f"{what} is not a draft reward message (a safetensors blob with draft metadata): {type(exc).__name__}: "
            f"{exc}; it began with {start!r} ({len(data)} bytes). Is the URL a `draft reward serve` server of the same "
            f"draft version?"
        ) from None


def tensor(tensors: dict[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in tensors:
        raise WireError(f"{what} has no '{key}' tensor (it has {sorted(tensors)}).")
    return tensors[key]
