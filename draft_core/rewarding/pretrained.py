"""Helpers for rewards that wrap a pretrained network (OWL-ViT, ResNet-50, the SD safety checker).

What every such reward needs and should do the same way: check its input batch (shape
and the [0, 1] range), pick the network's dtype from the run (bfloat16 on CUDA, float32
on CPU, float64 for float64 input so that gradcheck works), load the weights once on
first use and keep them frozen, and turn a missing checkpoint into one clear error that
says what was expected and how to provide it offline.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Hashable
from pathlib import Path

import torch
from torch import nn

from draft_core.errors import ModelLoadError
from draft_core.rewarding.checks import check_image_batch

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_reward_images(images: torch.Tensor, name: str) -> None:
    """ValueError (naming ``name``) unless ``images`` is a non-empty floating [B, 3, H, W] batch
    in [0, 1] (``check_image_batch``, which names [0, 255] and [-1, 1] mix-ups)."""
    check_image_batch(images, name)
    if images.numel() == 0:
        raise ValueError(f"{name}: got an empty batch of shape {list(images.shape)}.")


def check_dtype_option(dtype: str, name: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"{name}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    return dtype


def compute_dtype(images: torch.Tensor, dtype: str = "auto") -> torch.dtype:
    """The dtype a reward network runs in for this batch.

    ``auto``: float64 for float64 images (exact gradient checks), bfloat16 on CUDA (the
    run's dtype for frozen weights), float32 otherwise. A named dtype is used as given,
    except that float64 input still runs in float64.
    """
    if images.dtype == torch.float64:
        return torch.float64
    named = DTYPES[dtype]
    if named is not None:
        return named
    return torch.bfloat16 if images.device.type == "cuda" else torch.float32


_FROZEN: dict[tuple, nn.Module] = {}
#: the networks frozen_model gave each owner (a reward), for ``networks_of``.
_OWNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def random_weights(load: Callable[[], nn.Module]) -> bool:
    """Whether ``load`` is the one ``draft plan`` put in place of a reward's own (``use_architectures``
    in draft_core.planning.architectures): it builds ``architecture()``, random weights or none."""
    return bool(getattr(load, "random_weights", False))


def frozen_model(
    key: Hashable,
    load: Callable[[], nn.Module],
    device: torch.device,
    dtype: torch.dtype,
    owner: object | None = None,
) -> nn.Module:
    """``load()`` once per (key, device, dtype), frozen (no parameter gradients) and in eval mode.

    Each (device, dtype) loads from the source again rather than converting another copy,
    so a float32 copy never comes from a bfloat16 one. Instances sharing a key share weights.
    owner: the reward asking (``self``): ``networks_of(owner)`` then lists the network, so that
    ``draft plan`` counts it as reward weights. A ``load`` that ``draft plan`` put in place of the
    reward's own (its ``architecture()``: random weights or none) is cached apart, so random
    weights never serve a real call.
    """
    full = (key, torch.device(device), dtype, random_weights(load))
    if full not in _FROZEN:
        model = load()
        model.requires_grad_(False).eval()
        _FROZEN[full] = model.to(device=device, dtype=dtype)
    if owner is not None:
        _OWNED.setdefault(owner, {})[full] = _FROZEN[full]
    return _FROZEN[full]


def networks_of(owner: object) -> list[nn.Module]:
    """The networks ``frozen_model`` has given ``owner`` (one per device and dtype it ran in)."""
    try:
        return list(_OWNED.get(owner, {}).values())
    except TypeError:  # not weak-referenceable: it never owned one
        return []


def offline_note() -> str:
    """A sentence on how the Hugging Face cache is being used right now."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set, so only the local cache was searched."
    return "Set HF_HUB_OFFLINE=1 to search only the local cache (no network)."


def hub_load_error(
    what: str, source: str, exc: BaseException, *, files: str, hub_id: str | None = None
) -> ModelLoadError:
    """The error for a Hugging Face checkpoint that could not be loaded from ``source``.

    source: the hub id or local folder tried; hub_id: the checkpoint to suggest downloading
    (default: ``source``); files: what a local folder must hold (e.g. ``config.json and
    model.safetensors``).
    """
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hub_id = hub_id or source
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join("~", ".cache", "huggingface")), "hub"
    )
    return ModelLoadError(
        f"{what}: could not load '{source}' ({first}). Give `path:` a local folder holding"
        f" {files} (as written by save_pretrained, or `hf download {hub_id} --local-dir DIR`"
        f" on a machine with network), or put '{hub_id}' in the Hugging Face cache ({cache}). " + offline_note()
    )


def check_pretrained_available(
    what: str, hub_id: str, path: str | None, *, files: str, subfolder: str | None = None
) -> None:
    """The cheap check behind a reward's ``check_available()`` for a Hugging Face checkpoint: ``path``
    is a folder, or ``hub_id``'s config.json is in the cache, or (HF_HUB_OFFLINE unset) the hub may
    be asked at the first call. Loads nothing; ModelLoadError as ``hub_load_error`` words it otherwise."""
    if path is not None:
        if not Path(path).expanduser().is_dir():
            raise ModelLoadError(f"{what}: path '{path}' is not a folder; give a folder holding {files}.")
        return
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on"):
        return
    from huggingface_hub import try_to_load_from_cache

    name = f"{subfolder}/config.json" if subfolder else "config.json"
    if not isinstance(try_to_load_from_cache(hub_id, name), str):
        raise hub_load_error(what, hub_id, FileNotFoundError(f"{name} is not in the Hugging Face cache"), files=files)
