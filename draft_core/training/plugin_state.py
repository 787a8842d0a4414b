"""A plugin's own checkpointed state (an estimator's ``state_dict()``), made safe to save.

A checkpoint holds tensors (safetensors), so ``pack_state`` stores plain numbers (int, float, bool)
as 0-dimensional tensors and records which keys they were; ``unpack_state`` gives them back as
numbers. Anything else is refused at the first save with a message naming the plugin and the key,
before any file is written.
"""

from __future__ import annotations

from typing import Any

import torch

from draft_core.errors import DraftError

NUMBERS = {"bool": (bool, torch.bool), "int": (int, torch.int64), "float": (float, torch.float64)}


class PluginStateError(DraftError):
    """A plugin's state_dict() holds something a checkpoint cannot store."""


def pack_state(state: dict[str, Any], label: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to save, key -> 'int' | 'float' | 'bool' for the keys that were plain numbers)."""
    if not isinstance(state, dict):
        raise PluginStateError(
            f"{label}: state_dict() returned {type(state).__name__}; it must return a dict of names to tensors."
        )
    tensors: dict[str, torch.Tensor] = {}
    numbers: dict[str, str] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise PluginStateError(f"{label}: state_dict() has the key {key!r}; its keys must be strings.")
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().clone()  # views of one storage cannot be saved as they are
            continue
        kind = next((k for k, (t, _) in NUMBERS.items() if type(value) is t), None)
        if kind is None:
            raise PluginStateError(
                f"{label}: state_dict() holds {key!r} = {value!r:.60} ({type(value).__name__}); a checkpoint stores "
                "tensors and plain numbers (int, float, bool) only. Store it as a tensor, or flatten a nested "
                "dict into keys such as 'opt.0.step'. Nothing was written; the last checkpoint is kept."
            )
        tensors[key] = torch.tensor(value, dtype=NUMBERS[kind][1])
        numbers[key] = kind
    return tensors, numbers


def unpack_state(tensors: dict[str, torch.Tensor], numbers: dict[str, str]) -> dict[str, Any]:
    """The state as ``pack_state`` was given it: the recorded keys back as Python numbers."""
    return {k: NUMBERS[numbers[k]][0](v.item()) if k in numbers else v for k, v in tensors.items()}
