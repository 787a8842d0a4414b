"""diffusers' LoRA file layout for a model family whose diffusers pipeline has no LoRA loader.

diffusers' loaders write one ``pytorch_lora_weights.safetensors`` holding each component's peft keys
under its prefix (``transformer.transformer_blocks.0.attn1.to_q.lora_A.weight``) and, in the
safetensors header, ``lora_adapter_metadata``: each component's peft ``LoraConfig`` entries under the
same prefix (``transformer.r``, ``transformer.lora_alpha``, ...). A family whose pipeline class has no
``save_lora_weights``/``lora_state_dict`` (PixArt-Sigma's) gets this layout from ``ModelFamily``'s
provided hooks through the two functions here, so its files read as any diffusers LoRA file does
(no kohya conversion: that is a loader's business).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from draft_core.lora.adapters import WEIGHT_NAME

#: the safetensors header key diffusers keeps the adapters' peft configs under.
METADATA_KEY = "lora_adapter_metadata"


def write_lora_layers(folder: str | Path, layers: dict[str, dict[str, torch.Tensor]],
                      metadata: dict[str, dict[str, Any] | None]) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors``: ``layers`` (component -> peft state) with each
    key under its component's prefix, ``metadata`` (component -> peft config dict) in the header."""
    from safetensors.torch import save_file

    state = {f"{component}.{key}": tensor.detach().contiguous()
             for component, tensors in layers.items() for key, tensor in tensors.items()}
    configs = {f"{component}.{key}": sorted(value) if isinstance(value, set) else value
               for component, config in metadata.items() for key, value in (config or {}).items()}
    header = {"format": "pt"}
    if configs:
        header[METADATA_KEY] = json.dumps(configs, indent=2, sort_keys=True)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / WEIGHT_NAME), metadata=header)
    return folder / WEIGHT_NAME


def read_lora_layers(source: str | Path | dict, weight_name: str = WEIGHT_NAME, **_: Any
                     ) -> tuple[dict[str, torch.Tensor], None, dict[str, Any] | None]:
    """(state with the components' prefixes, None for kohya alphas, the header's adapter metadata or
    None) of a file ``write_lora_layers`` (or a diffusers loader) wrote: a folder plus ``weight_name``,
    or a state dict already read. Other keyword arguments of diffusers' ``lora_state_dict`` are ignored."""
    if isinstance(source, dict):
        return dict(source), None, None
    from safetensors import safe_open

    file = Path(source) / weight_name
    with safe_open(str(file), "pt") as f:
        header = f.metadata() or {}
        state = {key: f.get_tensor(key) for key in f.keys()}
    metadata = json.loads(header[METADATA_KEY]) if METADATA_KEY in header else None
    return state, None, metadata
