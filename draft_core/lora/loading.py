"""Applying ``--lora`` files at sampling time: read any LoRA layout draft meets, check that it fits the
model, then load it as a peft adapter and mix the adapters (paper Section 5.2).

Layouts read: diffusers/peft files (``pytorch_lora_weights.safetensors``, what draft writes), kohya
files (``lora_unet_*``, what ``draft lora export`` writes, converted by diffusers' own
``lora_state_dict``) and a checkpoint's ``lora.safetensors`` (peft keys without the ``unet.``
prefix; its alpha comes from the run's config.yaml). Anything else (a full model's weights, a
text-encoder-only LoRA, an image) is refused with a message naming what was found, and so is a
LoRA whose layers do not fit the model, naming the model it was trained on (from its model card
or run config) and the model given.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from draft_core.errors import DraftError
from draft_core.lora.adapters import WEIGHT_NAME, LoraSpec

CHECKPOINT_LORA = "lora.safetensors"  # a checkpoint's adapter tensors (peft keys, no component prefix)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# peft keys (lora_A/B) and the older diffusers attention-processor keys kohya files convert to.
_FACTOR = re.compile(
    r"\.(lora_A|lora_B|lora\.down|lora\.up|lora_linear_layer\.down|lora_linear_layer\.up)(\.[^.]+)?\.weight$"
)


def base_model_of(folder: Path) -> str | None:
    """The model a LoRA was trained on: its run's config.yaml (beside, above, or two levels above a
    checkpoint), or the ``base_model`` line of its model card; None when nothing records it."""
    folder = Path(folder)
    data = run_config_of(folder)
    name = (data.get("model") or {}).get("name") if data is not None else None
    if isinstance(name, str):
        return name
    card = folder / "README.md"
    if card.is_file():
        for line in card.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("base_model:"):
                return line.split(":", 1)[1].strip() or None
    return None


def run_config_of(folder: Path) -> dict | None:
    """The config.yaml of the run a LoRA folder came from (beside it, above it, or two levels above a
    checkpoint), read as a mapping with a ``model`` section; None when there is none."""
    import yaml

    from draft_core.rundir import CONFIG

    folder = Path(folder)
    for config in (folder / CONFIG, folder.parent / CONFIG, folder.parent.parent / CONFIG):
        if config.is_file():
            try:
                data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if isinstance(data, dict) and isinstance(data.get("model"), dict):
                return data
    return None


@dataclass
class LoraInput:
    """A LoRA read for loading: diffusers keys (``unet.``-prefixed), kohya alphas, peft metadata."""

    state: dict[str, torch.Tensor]
    alphas: dict[str, float] | None
    metadata: dict | None


def _lora_alpha_of_run(folder: Path, rank: int) -> float:
    import yaml

    from draft_core.rundir import RunDir

    config = RunDir(folder.parent.parent).config  # runs/x/checkpoints/step-N -> runs/x
    if config.is_file():
        alpha = ((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("lora") or {}).get("alpha")
        if isinstance(alpha, (int, float)):
            return float(alpha)
    return float(rank)


def read_lora_input(spec: LoraSpec, model=None) -> LoraInput:
    """The tensors of ``spec`` in diffusers' layout, whatever layout the file has, read by the model
    family's own pipeline class (``lora_state_dict`` converts kohya and other layouts; Stable
    Diffusion's without a model)."""
    from draft_core.lora.validate import LoraFileError, read_lora_tensors
    from draft_core.models.loading import family_of_pipeline

    file = spec.path if spec.path.is_file() else spec.path / WEIGHT_NAME
    shown = f"--lora '{spec.path}'"
    prefix = lora_prefix(model)
    family = type(model) if model is not None else family_of_pipeline(None, "", "sd")
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        raw, _ = read_lora_tensors(file, f"{shown} ('{file}')")
        unprefixed = not any(k.startswith(("unet.", "transformer.", "text_encoder", "lora_")) for k in raw)
        if file.name == CHECKPOINT_LORA and unprefixed and any(".lora_A." in k for k in raw):
            # A checkpoint's adapter: peft keys of the denoiser, alpha from the run's config.
            rank = next(v.shape[0] for k, v in raw.items() if ".lora_A." in k)
            modules = sorted({_FACTOR.split(k)[0] for k in raw})
            metadata = {
                f"{prefix}.r": rank,
                f"{prefix}.lora_alpha": _lora_alpha_of_run(file.parent, rank),
                f"{prefix}.target_modules": modules,
            }
            return LoraInput({f"{prefix}.{k}": v for k, v in raw.items()}, None, metadata)
        source, kwargs = str(file.parent), {"weight_name": file.name}
    elif suffix in PICKLE_SUFFIXES:
        source, kwargs = read_lora_tensors(file, f"{shown} ('{file}')")[0], {}  # torch.load(weights_only=True), checked
    else:
        raise DraftError(
            f"{shown}: '{file.name}' is not a LoRA file. Give a folder holding {WEIGHT_NAME} (such as a run's "
            f"lora/ folder), a run folder, a checkpoint folder, or a .safetensors LoRA file (diffusers or kohya layout)."
        )
    try:
        state, alphas, metadata = family.lora_state_dict(source, **kwargs)  # the family's hook
    except (
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        RuntimeError,
        AttributeError,
    ) as exc:  # diffusers' converters on odd keys
        raise LoraFileError(
            f"{shown}: could not convert '{file}' to the family's LoRA layout ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); give a diffusers, peft or kohya LoRA file."
        ) from None
    return LoraInput(state, alphas, metadata)


def lora_prefix(model) -> str:
    """The key prefix of a model family's denoiser in LoRA files ("unet", "transformer")."""
    return getattr(model, "denoiser_name", "unet") if model is not None else "unet"


def _described(keys: Sequence[str]) -> str:
    shown = ", ".join(f"'{k}'" for k in list(keys)[:2])
    return f"{len(keys)} tensors such as {shown}"


def check_fits(
    unet: torch.nn.Module, lora: LoraInput, spec: LoraSpec, model_name: str | None, prefix: str = "unet"
) -> None:
    """DraftError unless every denoiser module the LoRA names exists in ``unet`` with matching sizes."""
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    shown = f"--lora '{spec.path}'"
    keys = list(lora.state)
    unet_keys = [k for k in keys if k.startswith(f"{prefix}.")]
    other = "transformer" if prefix == "unet" else "unet"
    if not unet_keys and any(k.startswith(f"{other}.") for k in keys):
        raise DraftError(
            f"{shown} is a LoRA of a {other} (a {'UNet' if other == 'unet' else 'transformer'} model family), "
            f"but {model_name or 'this model'} has a {prefix}: LoRAs apply only to the model family they were trained on."
        )
    if not unet_keys:
        if any(_FACTOR.search(k) for k in keys):
            parts = sorted({k.split(".", 1)[0] for k in keys})
            raise DraftError(
                f"{shown} holds LoRA tensors for {', '.join(parts)} only, none for the UNet, which is all draft applies."
            )
        hint = (
            (
                " It looks like a model's full weights (such as a fused pipeline's unet/diffusion_pytorch_model.safetensors), "
                "not a LoRA: to sample a fused model, give its folder as --model."
            )
            if not any("lora" in k for k in keys)
            else ""
        )
        raise DraftError(
            f"{shown} applies to no module of the UNet: it holds {_described(keys)}, none of them LoRA factors of a UNet layer.{hint}"
        )
    if len(unet_keys) < len(keys):
        print(
            f"warning: {shown}: ignoring its {len(keys) - len(unet_keys)} text-encoder tensors; draft applies UNet LoRAs only.",
            file=sys.stderr,
        )
    peft = {k[len(prefix) + 1 :]: v for k, v in lora.state.items() if k.startswith(f"{prefix}.")}
    if not any(".lora_A." in k for k in peft):
        peft = convert_unet_state_dict_to_peft(peft)
    factors = {key: m for key in peft if (m := re.fullmatch(r"(.+)\.lora_([AB])\.weight", key))}
    if not factors:
        raise DraftError(
            f"{shown} applies to no module of the UNet: it holds {_described(keys)}, none of them LoRA factors of a UNet layer."
        )
    modules = dict(unet.named_modules())
    problems, missing = [], []
    for key, m in factors.items():
        tensor = peft[key]
        module = modules.get(m[1])
        if module is None:
            missing.append(m[1])
            continue
        size = (
            getattr(module, "in_features", getattr(module, "in_channels", None))
            if m[2] == "A"
            else getattr(module, "out_features", getattr(module, "out_channels", None))
        )
        dim = 1 if m[2] == "A" else 0
        if size is not None and tensor.ndim > dim and tensor.shape[dim] != size:
            side = "inputs" if m[2] == "A" else "outputs"
            problems.append((m[1], f"'{m[1]}' has {size} {side} in this model, {tensor.shape[dim]} in the LoRA"))
    if not problems and not missing:
        return
    base = base_model_of(spec.folder)
    given = f"the model '{model_name}'" if model_name else "this model"
    trained = (
        f"was trained on '{base}' (its model card or run config says so)"
        if base
        else "was trained on another model (its base model is not recorded)"
    )
    detail = problems[0][1] if problems else f"'{missing[0]}' is not a layer of this model"
    count = len({name for name, _ in problems} | set(missing))
    fix = (
        f" Sample with --model {base}, or give a LoRA trained on {model_name or 'this model'}."
        if base and base != model_name
        else ""
    )
    raise DraftError(
        f"{shown} {trained} and does not fit {given}: {count} of its layers do not match (e.g. {detail}).{fix}"
    )


def apply_loras(target, specs: Sequence[LoraSpec], model_name: str | None = None) -> list[str]:
    """Load each LoRA as its own adapter on the model's denoiser and mix them: W = W0 + Σ scale_i ΔW_i
    (paper §5.2). ``target``: a model family (or a bare UNet).

    ``model_name`` (the ``--model`` given) only names the model in the error for a LoRA that does not fit.
    """
    from draft_core.lora.adapters import denoiser_of, with_peft
    from draft_core.lora.validate import LoraFileError

    unet = denoiser_of(target)
    model = target if unet is not target else None
    prefix = lora_prefix(model)
    loras = [read_lora_input(spec, model) for spec in specs]  # every file checked before the model is touched
    # a diffusers model without PeftAdapterMixin (PixArt's) loads adapters as add_lora trains them
    unet = with_peft(unet)
    names = []
    for i, (spec, lora) in enumerate(zip(specs, loras)):
        name = f"lora{i}"
        check_fits(unet, lora, spec, model_name, prefix)
        with warnings.catch_warnings():
            # peft warns on every adapter after the first; several adapters are the point here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            try:
                unet.load_lora_adapter(
                    lora.state, prefix=prefix, network_alphas=lora.alphas, adapter_name=name, metadata=lora.metadata
                )
            except (ValueError, TypeError, KeyError, RuntimeError) as exc:  # peft's LoraConfig on a file's odd metadata
                raise LoraFileError(
                    f"--lora '{spec.path}': peft could not build an adapter from it ({type(exc).__name__}: "
                    f"{' '.join(str(exc).split())[:200]}); check its lora_adapter_metadata."
                ) from None
        names.append(name)
    if names:
        unet.set_adapters(names, weights=[s.scale for s in specs])
    return names
