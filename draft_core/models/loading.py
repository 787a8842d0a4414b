"""Load a DiffusionModel by name: an embedded model, a local diffusers folder, or a hub id.

Hub ids and folders go through each component's ``from_pretrained`` (the user's hub
cache; a real SD 1.4 loads unchanged). Base weights are frozen; the default dtype is
bfloat16 on CUDA and float32 on CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from draft_core.errors import ModelLoadError, did_you_mean
from draft_core.models.pipeline import DiffusionModel

# The pipeline classes (model_index.json's _class_name) whose folders load: Stable Diffusion 1.x's, and
# what DiffusionModel.save_pretrained writes for a pixel-space model.
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "DraftPixelPipeline")
# Named models built or shipped by the project; values build the model on the CPU.
EMBEDDED: dict[str, Callable[[], DiffusionModel]] = {}


def embedded(name: str):
    """Decorator: register a named embedded model builder."""

    def wrap(fn: Callable[[], DiffusionModel]) -> Callable[[], DiffusionModel]:
        EMBEDDED[name] = fn
        return fn

    return wrap


@embedded("tiny-random")
def _tiny_random() -> DiffusionModel:
    from draft_core.models.tiny import build_tiny_random

    return build_tiny_random()


@embedded("digits")
def _digits() -> DiffusionModel:
    from draft_core.models.digits import build_digits

    return build_digits()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise ModelLoadError(f"model.dtype '{name}' is not one of {sorted(DTYPES)}.")
    return DTYPES[name] or default_dtype(device)


def load_model(
    name: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
) -> DiffusionModel:
    """``name``: an embedded model (``tiny-random``, ...), a local diffusers folder, or a hub id."""
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if name in EMBEDDED:
        model = EMBEDDED[name]()
    else:
        model = _from_pretrained(name, dtype, revision)
    return model.to(device=device, dtype=dtype)


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE``, now or at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def _not_found(name: str, reason: str) -> ModelLoadError:
    where = ("in the Hugging Face cache (HF_HUB_OFFLINE is set, so the hub was not contacted)" if hub_offline()
             else "online or in the Hugging Face cache (set HF_HUB_OFFLINE=1 to use the cache only)")
    return ModelLoadError(
        f"could not load model '{name}': {reason.rstrip('.')}. It must be a local diffusers folder, a hub id "
        f"{where}, or one of the embedded models: {', '.join(sorted(EMBEDDED))}.{did_you_mean(name, EMBEDDED)}"
    )


def check_model(name: str, revision: str | None = None) -> None:
    """ModelLoadError unless ``name`` is an embedded model, a diffusers folder, or a hub id (its
    ``model_index.json`` from the cache, or fetched where the network allows) whose pipeline class
    draft supports. Reads no weights."""
    if name in EMBEDDED:
        return
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "unet").is_dir():
            raise ModelLoadError(
                f"model '{name}' is a path but not a diffusers folder (no unet/ subfolder). Give a folder "
                f"written by save_pretrained (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/, "
                f"optionally vae/), a hub id such as CompVis/stable-diffusion-v1-4, or one of: {', '.join(sorted(EMBEDDED))}."
            )
        index = local / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            index = Path(hf_hub_download(name, "model_index.json", revision=revision, local_files_only=hub_offline()))
        except Exception as exc:  # not cached, offline, no such repo, invalid id: all mean "not found" here
            raise _not_found(name, " ".join(str(exc).split())[:200] or type(exc).__name__) from exc
    try:
        cls = json.loads(index.read_text(encoding="utf-8")).get("_class_name") if index.is_file() else None
    except (OSError, ValueError, AttributeError):
        cls = None
    if cls is not None and cls not in SUPPORTED_PIPELINES:
        xl = " (SDXL has two text encoders and extra size conditioning)" if "XL" in str(cls) else ""
        raise ModelLoadError(
            f"model '{name}' is a {cls} (model_index.json's _class_name), which draft does not support{xl}. "
            f"draft drives {' and '.join(SUPPORTED_PIPELINES)} folders: Stable Diffusion 1.x-style models (one CLIP "
            f"text encoder, a UNet2DConditionModel, a VAE) and draft's own pixel-space models."
        )


def _from_pretrained(name: str, dtype: torch.dtype, revision: str | None) -> DiffusionModel:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    check_model(name, revision)
    local = Path(name).expanduser()
    source = str(local) if local.exists() else name
    kw = {"revision": revision} if revision and not local.exists() else {}
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **kw)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype, **kw)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
        scheduler_config = dict(DDIMScheduler.load_config(source, subfolder="scheduler", **kw))
        has_vae = (local / "vae").is_dir() if local.exists() else True
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kw) if has_vae else None
    except (OSError, ValueError) as exc:
        raise _not_found(name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    return DiffusionModel(unet, text_encoder, tokenizer, scheduler_config, vae=vae, name=name)
