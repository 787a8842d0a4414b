"""LoRA on a model family's denoiser through peft, saved and loaded in the diffusers LoRA format.

Each function takes a model (a ``ModelFamily``: its ``denoiser`` gets the adapter, its named target
sets apply, its pipeline class writes the file) or the denoiser module itself (then the UNet sets
below apply). For UNets the targets follow the paper (Appendix A.1): the cross-attention
projections (``attn2``) and the feed-forward layers of every transformer block; the named set
``attention+ff`` adds the self-attention projections (``attn1``). Saved files are
``pytorch_lora_weights.safetensors`` with ``unet.``- (or ``transformer.``-) prefixed peft keys,
which the family's diffusers pipeline loads with ``load_lora_weights(dir)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from draft_core.errors import DraftError

FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
CROSS_ATTENTION = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
DEFAULT_TARGETS = CROSS_ATTENTION + FEED_FORWARD  # the paper's (A.1)
# Named sets for lora.targets (peft matches each entry as a module-name suffix).
TARGET_SETS = {
    "cross-attention+ff": DEFAULT_TARGETS,
    "attention+ff": ("to_q", "to_k", "to_v", "to_out.0") + FEED_FORWARD,
}
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER = "default"


def denoiser_of(target) -> torch.nn.Module:
    """The module that carries the LoRA: a model family's denoiser, or the module given."""
    return target.denoiser if hasattr(target, "denoiser") and not isinstance(target, torch.nn.Module) else target


_PEFT_CLASSES: dict[type, type] = {}


def with_peft(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` able to carry a peft adapter: a diffusers model without ``PeftAdapterMixin`` (PixArt's
    transformer, say) gets it mixed into its class here, so a model family need not add it; another
    module without ``add_adapter`` is a DraftError naming what it needs."""
    if callable(getattr(module, "add_adapter", None)):
        return module
    from diffusers import ModelMixin
    from diffusers.loaders.peft import PeftAdapterMixin

    cls = type(module)
    if not isinstance(module, ModelMixin):
        raise DraftError(
            f"the denoiser is a {cls.__module__}.{cls.__name__}, which cannot carry a LoRA: it must be a diffusers "
            f"ModelMixin (draft adds peft's adapter methods to it) or have diffusers' PeftAdapterMixin."
        )
    if cls not in _PEFT_CLASSES:  # same name and module, so saved configs still name the original class
        _PEFT_CLASSES[cls] = type(cls.__name__, (cls, PeftAdapterMixin), {"__module__": cls.__module__})
    module.__class__ = _PEFT_CLASSES[cls]
    return module


def add_lora(
    target,
    rank: int = 8,
    alpha: float | None = None,
    targets: Sequence[str] | str | None = None,
    init: str | bool = True,
) -> list[torch.nn.Parameter]:
    """Add a trainable LoRA adapter (fp32 parameters, base weights stay frozen); return its parameters.

    target: a model family or a denoiser module. targets: module-name suffixes, a named set of the
    family (or of ``TARGET_SETS`` for a bare module), or None for the default. alpha defaults to rank
    (scale 1). init=True starts at the identity (B = 0); "gaussian" or False give a
    non-zero start (used by gradient tests).
    """
    if rank < 1:
        raise DraftError(f"lora.rank must be a positive integer, got {rank}.")
    unet = denoiser_of(target)
    if unet is not target:
        targets = target.lora_targets(targets)
    elif targets is None:
        targets = DEFAULT_TARGETS
    elif isinstance(targets, str):
        if targets not in TARGET_SETS:
            raise DraftError(
                f"lora.targets {targets!r} is not a named set; use one of {list(TARGET_SETS)} or a list of module names."
            )
        targets = TARGET_SETS[targets]
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        target_modules=list(targets),
        init_lora_weights=init,
    )
    try:
        with_peft(unet).add_adapter(config, adapter_name=ADAPTER)
    except ValueError as exc:  # peft: no module matched
        raise DraftError(
            f"lora.targets {list(targets)} matched no layer of the {type(unet).__name__} ({exc}). Use module-name "
            f"suffixes such as {list(DEFAULT_TARGETS if unet is target else target.lora_targets())}"
            + (f", or one of the named sets {sorted(target.lora_target_sets)}." if unet is not target else ".")
        ) from exc
    params = lora_parameters(unet)
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def lora_parameters(target) -> list[torch.nn.Parameter]:
    return [p for n, p in denoiser_of(target).named_parameters() if "lora_" in n]


def lora_config_dict(target, adapter: str = ADAPTER) -> dict:
    cfg = denoiser_of(target).peft_config[adapter].to_dict()
    # Sets are not JSON; diffusers stores this dict in the safetensors metadata.
    return {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}


def save_lora(target, folder: str | Path, adapter: str = ADAPTER) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` in the diffusers format (the family's pipeline
    class writes it; a bare UNet is written as Stable Diffusion's)."""
    from diffusers import StableDiffusionPipeline

    unet = denoiser_of(target)
    if unet is not target:
        state = {
            k: v.detach().float().cpu().contiguous()
            for k, v in get_peft_model_state_dict(unet, adapter_name=adapter).items()
        }
        return target.save_lora_weights(folder, state, lora_config_dict(unet, adapter))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().float().cpu().contiguous()
        for k, v in get_peft_model_state_dict(unet, adapter_name=adapter).items()
    }
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=state,
        safe_serialization=True,
        unet_lora_adapter_metadata=lora_config_dict(unet, adapter),
    )
    return folder / WEIGHT_NAME


def lora_state(target, adapter: str = ADAPTER) -> dict[str, torch.Tensor]:
    """The adapter's tensors (peft keys), for checkpoints."""
    unet = denoiser_of(target)
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(unet, adapter_name=adapter).items()}


def load_lora_state(target, state: dict[str, torch.Tensor], adapter: str = ADAPTER) -> None:
    unet = denoiser_of(target)
    try:
        result = set_peft_model_state_dict(unet, state, adapter_name=adapter)
    except RuntimeError as exc:
        if "size mismatch" not in str(exc):
            raise
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "")
        raise DraftError(
            f"the checkpoint's LoRA does not fit this model's layers ({first}); it was trained on another model. "
            f"Resume with the run's own model.name."
        ) from None
    unexpected = getattr(result, "unexpected_keys", []) or []
    if unexpected:
        raise DraftError(f"checkpoint LoRA has keys this model lacks: {unexpected[:3]}...")
    expected = set(get_peft_model_state_dict(unet, adapter_name=adapter))
    missing = sorted(expected - set(state))
    if missing:
        raise DraftError(
            f"checkpoint LoRA lacks {len(missing)} of this model's LoRA tensors (e.g. {missing[0]}); was it written with another lora.rank or lora.targets?"
        )


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA to apply at sampling time: a folder (or file) and a scale."""

    path: Path
    scale: float = 1.0

    @property
    def folder(self) -> Path:
        """The folder holding the LoRA file (and anything saved beside it)."""
        return self.path.parent if self.path.is_file() else self.path

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``PATH[:SCALE]``; a run folder stands for its ``lora/`` subfolder, a checkpoint folder
        (``checkpoints/step-N``) for its ``lora.safetensors``."""
        path, scale = text, 1.0
        if not Path(text).exists():
            # The longest existing path before a ':' is the LoRA, and the rest its scale; with no
            # such path, a numeric tail is still read as the scale (the path is reported missing below).
            colons = [i for i, c in enumerate(text) if c == ":"]
            head = next((text[:i] for i in reversed(colons) if i and Path(text[:i]).exists()), None)
            if head is None and colons and _number(text[colons[-1] + 1 :]) is not None:
                head = text[: colons[-1]]
            if head is not None:
                tail = text[len(head) + 1 :]
                if _number(tail) is None:
                    raise DraftError(
                        f"--lora '{text}': bad scale '{tail}'; SCALE must be a finite number (e.g. {head}:0.75)."
                    )
                path, scale = head, _number(tail)
        p = Path(path)
        if p.is_dir() and not (p / WEIGHT_NAME).exists() and (p / "lora" / WEIGHT_NAME).exists():
            p = p / "lora"
        elif p.is_dir() and not (p / WEIGHT_NAME).exists() and (p / "lora.safetensors").is_file():
            p = p / "lora.safetensors"
        if not (p.is_file() or (p / WEIGHT_NAME).exists()):
            raise DraftError(
                f"--lora '{text}': no LoRA found at '{p}'. Give a folder holding {WEIGHT_NAME} "
                f"(such as a run's lora/ folder), a run folder, a checkpoint folder, or a .safetensors file, optionally "
                f"followed by :SCALE (e.g. runs/x/lora:0.75)."
            )
        return cls(p, scale)


@contextlib.contextmanager
def adapters_enabled(unet: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Run a block with the LoRA adapters on or off (LoRA step windows, Appendix B.7)."""
    if enabled or not getattr(unet, "_hf_peft_config_loaded", False):
        yield
        return
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()
