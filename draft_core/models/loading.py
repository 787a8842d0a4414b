"""Load a model by name: an embedded model, a local diffusers folder, or a hub id.

The family (``sd``, ``sdxl``, ``sd3``, ``flux``, or a plugin's) comes from the folder's
``model_index.json`` (``_class_name``) unless ``model.family`` names it. Hub ids and folders go
through each component's ``from_pretrained`` (the user's hub cache; a real SD 1.4 loads unchanged). Base weights are frozen; the default dtype is
bfloat16 on CUDA and float32 on CPU.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from draft_core.errors import ModelLoadError, did_you_mean
from draft_core.models.digits_flow import DEFAULT_GUIDANCE as DIGITS_FLOW_GUIDANCE
from draft_core.models.digits_flow import DEFAULT_STEPS as DIGITS_FLOW_STEPS
from draft_core.models.family import ModelFamily
from draft_core.models.folder_index import check_index
from draft_core.models.pipeline import DiffusionModel

# Named models built or shipped by the project; values build the model on the CPU.
EMBEDDED: dict[str, Callable[[], ModelFamily]] = {}
# The family of each embedded model (known without building it).
EMBEDDED_FAMILIES: dict[str, str] = {}
# Sampling defaults an embedded model declares over its family's (steps, guidance_scale).
EMBEDDED_SAMPLING: dict[str, dict[str, Any]] = {}


def embedded(name: str, family: str = "sd", sampling: dict[str, Any] | None = None):
    """Decorator: register a named embedded model builder of ``family`` (``sampling``: its own defaults)."""

    def wrap(fn: Callable[[], ModelFamily]) -> Callable[[], ModelFamily]:
        EMBEDDED[name] = fn
        EMBEDDED_FAMILIES[name] = family
        if sampling:
            EMBEDDED_SAMPLING[name] = dict(sampling)
        return fn

    return wrap


@embedded("tiny-random")
def _tiny_random() -> DiffusionModel:
    from draft_core.models.tiny import build_tiny_random

    return build_tiny_random()


@embedded("tiny-random-sdxl", family="sdxl")
def _tiny_random_sdxl():
    from draft_core.models.families.sdxl import build_tiny_random_sdxl

    return build_tiny_random_sdxl()


@embedded("tiny-random-sd3", family="sd3")
def _tiny_random_sd3():
    from draft_core.models.tiny_sd3 import build_tiny_random_sd3

    return build_tiny_random_sd3()


@embedded("tiny-random-flux", family="flux")
def _tiny_random_flux() -> ModelFamily:
    from draft_core.models.families.flux import build_tiny_random_flux

    return build_tiny_random_flux()


@embedded("digits")
def _digits() -> DiffusionModel:
    from draft_core.models.digits import build_digits

    return build_digits()


@embedded("digits-flow", family="sd3", sampling={"steps": DIGITS_FLOW_STEPS, "guidance_scale": DIGITS_FLOW_GUIDANCE})
def _digits_flow():
    from draft_core.models.digits_flow import build_digits_flow_model

    return build_digits_flow_model()


def _scheduler_constant(module: str, attr: str) -> Callable[[], dict]:
    return lambda: getattr(importlib.import_module(module), attr)


def _scheduler_file(package: str) -> Callable[[], dict]:
    return lambda: json.loads(
        (importlib.import_module(package).WEIGHTS_DIR / "scheduler_config.json").read_text(encoding="utf-8")
    )


# Each embedded model's scheduler config, known without building the model (config range checks use it).
_EMBEDDED_SCHEDULERS: dict[str, Callable[[], dict]] = {
    "tiny-random": _scheduler_constant("draft_core.models.tiny", "SD14_SCHEDULER_CONFIG"),
    "tiny-random-sdxl": _scheduler_constant("draft_core.models.families.sdxl", "SDXL_SCHEDULER_CONFIG"),
    "tiny-random-sd3": _scheduler_constant("draft_core.models.tiny_sd3", "SD35_SCHEDULER_CONFIG"),
    "tiny-random-flux": _scheduler_constant("draft_core.models.families.flux", "FLUX_DEV_SCHEDULER_CONFIG"),
    "digits": _scheduler_file("draft_core.models.digits"),
    "digits-flow": _scheduler_file("draft_core.models.digits_flow"),
}


def embedded_scheduler_config(name: str) -> dict | None:
    """The scheduler config of the embedded model ``name`` without building it; None when not known."""
    read = _EMBEDDED_SCHEDULERS.get(name)
    return dict(read()) if read is not None else None


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
    family: str | None = None,
    quantize: str = "none",
) -> ModelFamily:
    """``name``: an embedded model (``tiny-random``, ...), a local diffusers folder, or a hub id; its family
    from ``model_index.json`` unless ``family`` (``model.family``) says. ``quantize`` (``model.quantize``):
    the denoiser's linear layers are quantized onto ``device`` (draft_core.models.quantize)."""
    from draft_core.models.quantize import check_quantize, quantize_denoiser

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    check_quantize(quantize, device)  # before any weights load
    if name in EMBEDDED:
        check_model(name, revision, family)
        model = EMBEDDED[name]()
    else:
        model = _from_pretrained(name, dtype, revision, family)
    if quantize == "none":
        return model.to(device=device, dtype=dtype)
    # The full-precision denoiser stays on the host; its layers reach the device already quantized.
    model.to(device="cpu", dtype=dtype)
    quantize_denoiser(model.denoiser, quantize, device)
    return model.to(device=device)


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE``, now or at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or bool(
        constants.HF_HUB_OFFLINE
    )


def _not_found(name: str, reason: str) -> ModelLoadError:
    where = (
        "in the Hugging Face cache (HF_HUB_OFFLINE is set, so the hub was not contacted)"
        if hub_offline()
        else "online or in the Hugging Face cache (set HF_HUB_OFFLINE=1 to use the cache only)"
    )
    return ModelLoadError(
        f"could not load model '{name}': {reason.rstrip('.')}. It must be a local diffusers folder, a hub id "
        f"{where}, or one of the embedded models: {', '.join(sorted(EMBEDDED))}.{did_you_mean(name, EMBEDDED)}"
    )


def family_of_pipeline(cls: str | None, name: str, family: str | None = None):
    """The registered family class that loads a ``model_index.json`` whose ``_class_name`` is ``cls``
    (``family``, from ``model.family``, overrides): the first registered family that claims ``cls``,
    built-ins first, so a plugin family never takes over a built-in's folders. ModelLoadError, before
    any weights load, otherwise; PluginError for a family name that two plugins register."""
    from draft_core.plugins.discovery import load_registry
    from draft_core.plugins.registry import pipeline_classes

    registry = load_registry()
    families = registry.names("model")
    if family is not None:
        if family not in families:
            raise ModelLoadError(
                f"model.family '{family}' is not a registered model family; the families are "
                f"{', '.join(families)}.{did_you_mean(family, families)}"
            )
        return registry.get("model", family).factory  # refuses a name two plugins register
    entry = registry.family_for_class(cls)
    if entry is not None:
        return registry.get("model", entry.name).factory
    supported = "; ".join(f"{e.name}: {', '.join(pipeline_classes(e.factory))}" for e in registry.entries("model"))
    raise ModelLoadError(
        f"model '{name}' is a {cls} (model_index.json's _class_name), which no registered model family loads. "
        f"The families and the pipelines they load are: {supported}. If the folder holds one of these "
        f"families' components under another pipeline name, set model.family."
    )


def _index_class(name: str, revision: str | None) -> tuple[str | None, Path | None]:
    """(model_index.json's _class_name, the local folder or None) of a folder or hub id."""
    local = Path(name).expanduser()
    if local.exists():
        index = local / "model_index.json"
        if not index.is_file() and (local / "unet").is_dir():
            return None, local  # an SD folder written without an index: the sd family reads it
        if not index.is_file():
            raise ModelLoadError(
                f"model '{name}' is a path but not a diffusers folder (no model_index.json). Give a folder "
                f"written by save_pretrained (model_index.json and one subfolder per component), a hub id such "
                f"as CompVis/stable-diffusion-v1-4, or one of: {', '.join(sorted(EMBEDDED))}."
            )
    else:
        from huggingface_hub import hf_hub_download

        try:
            index = Path(hf_hub_download(name, "model_index.json", revision=revision, local_files_only=hub_offline()))
        except Exception as exc:  # not cached, offline, no such repo, invalid id: all mean "not found" here
            raise _not_found(name, " ".join(str(exc).split())[:200] or type(exc).__name__) from exc
        local = None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        cls = data.get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"model '{name}': its model_index.json could not be read ({exc}).") from exc
    check_index(name, data)  # the components name diffusers' or transformers' classes, before anything is imported
    return cls, local


def check_model(name: str, revision: str | None = None, family: str | None = None):
    """The family class of ``name`` (an embedded model, a diffusers folder, or a hub id: its
    ``model_index.json`` from the cache, or fetched where the network allows); ModelLoadError
    unless a registered family loads it. Reads no weights."""
    if name in EMBEDDED:
        built = EMBEDDED_FAMILIES.get(name)
        if family is not None and built is not None and family != built:
            raise ModelLoadError(
                f"model.family is '{family}' but the embedded model '{name}' is a '{built}' model; "
                f"drop model.family or set it to '{built}'."
            )
        return family_of_pipeline(None, name, family or built or "sd")
    cls, _ = _index_class(name, revision)
    return family_of_pipeline(cls, name, family or (None if cls else "sd"))


def _from_pretrained(name: str, dtype: torch.dtype, revision: str | None, family: str | None = None):
    fam = check_model(name, revision, family)
    local = Path(name).expanduser()
    source = str(local) if local.exists() else name
    kw = {"revision": revision} if revision and not local.exists() else {}
    try:
        return fam.from_pretrained(source, dtype, **kw)
    except (OSError, ValueError) as exc:
        raise _not_found(name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
