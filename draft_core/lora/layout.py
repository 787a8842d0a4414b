"""LoRA files of a model family: through its ``lora_pipeline``'s loader, or diffusers' layout without one.

diffusers' loaders write one ``pytorch_lora_weights.safetensors`` holding each component's peft keys
under its prefix (``transformer.transformer_blocks.0.attn1.to_q.lora_A.weight``) and, in the
safetensors header, ``lora_adapter_metadata``: each component's peft ``LoraConfig`` entries under the
same prefix (``transformer.r``, ``transformer.lora_alpha``, ...). A family whose pipeline class has no
``save_lora_weights``/``lora_state_dict`` (PixArt-Sigma's) gets this layout from ``ModelFamily``'s
provided hooks through the two functions here, so its files read as any diffusers LoRA file does
(no kohya conversion: that is a loader's business).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from draft_core.errors import DraftError
from draft_core.lora.adapters import WEIGHT_NAME

#: the safetensors header key diffusers keeps the adapters' peft configs under.
METADATA_KEY = "lora_adapter_metadata"


def write_lora_layers(
    folder: str | Path, layers: dict[str, dict[str, torch.Tensor]], metadata: dict[str, dict[str, Any] | None]
) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors``: ``layers`` (component -> peft state) with each
    key under its component's prefix, ``metadata`` (component -> peft config dict) in the header."""
    from safetensors.torch import save_file

    state = {
        f"{component}.{key}": tensor.detach().contiguous()
        for component, tensors in layers.items()
        for key, tensor in tensors.items()
    }
    configs = {
        f"{component}.{key}": sorted(value) if isinstance(value, set) else value
        for component, config in metadata.items()
        for key, value in (config or {}).items()
    }
    header = {"format": "pt"}
    if configs:
        header[METADATA_KEY] = json.dumps(configs, indent=2, sort_keys=True)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / WEIGHT_NAME), metadata=header)
    return folder / WEIGHT_NAME


def read_lora_layers(
    source: str | Path | dict, weight_name: str = WEIGHT_NAME, **_: Any
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


def pipeline_loader(family: Any, method: str) -> Any:
    """The family's ``lora_pipeline``'s ``method`` (save_lora_weights, lora_state_dict), or None where it has none."""
    import diffusers

    found = getattr(getattr(diffusers, family.lora_pipeline, None), method, None) if family.lora_pipeline else None
    return found if callable(found) else None


def family_components(family: Any) -> tuple[str, ...]:
    """The components a LoRA file of ``family`` holds (``ModelFamily.lora_components``)."""
    loader = pipeline_loader(family, "save_lora_weights")
    if loader is None:
        return (family.denoiser_name,)
    return tuple(p[: -len("_lora_layers")] for p in inspect.signature(loader).parameters if p.endswith("_lora_layers"))


def save_family_layers(
    family: Any, folder: str | Path, layers: dict[str, dict[str, torch.Tensor]], metadata: dict[str, dict | None]
) -> Path:
    """``ModelFamily.save_lora_layers``: the pipeline's writer, or ``write_lora_layers``."""
    holds = family.lora_components()
    unknown = sorted(set(layers) - set(holds))
    if unknown:
        raise DraftError(
            f"these LoRA layers are of {', '.join(unknown)}, which a '{family.family}' LoRA file does not hold (it holds "
            f"{', '.join(holds)}): were they trained on another model family? Pass --family."
        )
    loader = pipeline_loader(family, "save_lora_weights")
    if loader is None:
        return write_lora_layers(folder, layers, metadata)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {f"{c}_lora_layers": state for c, state in layers.items()}
    kwargs.update({f"{c}_lora_adapter_metadata": m for c, m in metadata.items() if m is not None})
    loader(folder, safe_serialization=True, **kwargs)
    return folder / WEIGHT_NAME
