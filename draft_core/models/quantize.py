"""A quantized frozen denoiser (``model.quantize``: none, int8, nf4, fp8), QLoRA-style.

The frozen base's linear layers are stored at 8 or 4 bits and the LoRA trains over them in the
model's dtype (float32 on CPU, bfloat16 on CUDA). The quantization goes through diffusers' own
quantizers, the ones ``from_pretrained(quantization_config=...)`` uses, applied to a denoiser
already built (so an embedded model, a local folder and a hub id take one path):

- ``int8``: torchao's int8 weight-only (``TorchAoConfig(Int8WeightOnlyConfig())``); runs on CPU and CUDA.
- ``nf4``: bitsandbytes 4-bit NormalFloat (``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")``); CUDA.
- ``fp8``: torchao's float8 weight-only (``TorchAoConfig(Float8WeightOnlyConfig())``); CUDA with compute capability 8.9+.

``check_quantize`` says, before any weights load, whether the value can run on the device. The LoRA
file holds only the adapter's factors, so it loads into the plain, unquantized pipeline.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from draft_core.errors import ConfigError

#: ``model.quantize`` values, in order of storage size.
QUANTIZE_VALUES = ("none", "int8", "nf4", "fp8")
#: bits per stored weight of each value (what ``draft plan`` counts).
WEIGHT_BITS = {"none": None, "int8": 8, "nf4": 4, "fp8": 8}


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_quantize(value: str, device: torch.device | str) -> None:
    """ConfigError, naming what is missing, unless ``model.quantize: value`` can run on ``device``."""
    device = torch.device(device)
    if value not in QUANTIZE_VALUES:
        raise ConfigError(f"config key 'model.quantize' is {value!r}; give one of {', '.join(QUANTIZE_VALUES)}.")
    if value == "none":
        return
    needs: list[str] = []
    if value in ("nf4", "fp8") and device.type != "cuda":
        needs.append("a CUDA GPU (model.device is " + str(device) + ")")
    if value == "nf4" and not _has("bitsandbytes"):
        needs.append("the bitsandbytes package (pip install 'draft-diffusion[quantize-cuda]')")
    if value in ("int8", "fp8") and not _has("torchao"):
        needs.append("the torchao package (pip install 'draft-diffusion[quantize]')")
    if value == "fp8" and device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        if torch.cuda.get_device_capability(index) < (8, 9):
            needs.append("a GPU with float8 support (compute capability 8.9 or newer: Ada, Hopper, Blackwell)")
    if needs:
        alternatives = "model.quantize: int8 (torchao, CPU or CUDA) or none"
        raise ConfigError(
            f"model.quantize: {value} cannot run here: it needs {' and '.join(needs)}. The {value} base is "
            f"{'bitsandbytes 4-bit NormalFloat' if value == 'nf4' else 'torchao float8 weight-only' if value == 'fp8' else 'torchao int8 weight-only'}; "
            f"no weights were loaded. Use {alternatives}, or run on a machine that has what is named."
        )


def quantization_config(value: str, dtype: torch.dtype = torch.bfloat16) -> Any:
    """The diffusers quantization config of ``model.quantize: value`` (None for ``none``); ``dtype``:
    what the 4-bit layers compute in (the model's dtype)."""
    if value == "none":
        return None
    if value == "nf4":
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    from diffusers import TorchAoConfig
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return TorchAoConfig(Int8WeightOnlyConfig() if value == "int8" else Float8WeightOnlyConfig())


def quantize_denoiser(denoiser: torch.nn.Module, value: str, device: torch.device | str) -> torch.nn.Module:
    """Quantize ``denoiser``'s linear layers in place onto ``device``, one tensor at a time, as
    ``from_pretrained(quantization_config=...)`` does with a checkpoint's tensors (the full-precision
    layers never sit on the device together). Returns the denoiser."""
    from diffusers.models.model_loading_utils import load_model_dict_into_meta
    from diffusers.quantizers import DiffusersAutoQuantizer

    device = torch.device(device)
    check_quantize(value, device)
    dtype = next(denoiser.parameters()).dtype
    config = quantization_config(value, dtype)
    if config is None:
        return denoiser.to(device)
    quantizer = DiffusersAutoQuantizer.from_config(config, pre_quantized=False)
    # device_map None: torchao would leave layers bound for "cpu" unquantized (its offload rule).
    device_map = None if device.type == "cpu" else {"": device}
    quantizer.validate_environment(torch_dtype=dtype, device_map=device_map)
    keep = list(getattr(denoiser, "_keep_in_fp32_modules", None) or [])
    state = {k: v.detach() for k, v in denoiser.state_dict().items()}
    quantizer.preprocess_model(model=denoiser, device_map=device_map, keep_in_fp32_modules=keep)
    load_model_dict_into_meta(
        denoiser,
        state,
        dtype=dtype,
        hf_quantizer=quantizer,
        keep_in_fp32_modules=keep,
        device_map={"": device},
        unexpected_keys=[],
    )
    del state
    quantizer.postprocess_model(denoiser)
    denoiser.hf_quantizer = quantizer  # as from_pretrained leaves it: diffusers refuses dtype casts of it
    denoiser.requires_grad_(False)
    return denoiser


def quantized_layers(module: torch.nn.Module) -> int:
    """How many linear layers of ``module`` hold quantized weights (a plain float tensor is not)."""
    count = 0
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        if isinstance(sub, torch.nn.Linear) and weight is not None:
            plain = (
                type(weight) is torch.nn.Parameter
                and type(weight.data) is torch.Tensor
                and weight.dtype.is_floating_point
            )
            count += not plain
    return count
