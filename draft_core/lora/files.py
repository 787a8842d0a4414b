"""Sharing a trained LoRA: mix several into one, export the kohya layout, fuse into a pipeline.

- ``mix_loras``: a linear combination Σ w_i ΔW_i (paper Section 5.2) baked into one
  diffusers LoRA by concatenating ranks, so the merged adapter's delta equals the
  weighted sum exactly (up to float rounding of the scaled factors).
- ``export_kohya``: the key layout AUTOMATIC1111, ComfyUI and kohya-ss/sd-scripts load
  (``lora_unet_<module_path_with_underscores>.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha``, kohya scale = alpha / rank); each model family names its components
  (``ModelFamily.kohya_prefixes``, ``kohya_name``: SD's text encoder is ``lora_te``, SDXL's ``lora_te1``/``lora_te2``).
- ``fuse_lora_into_model``: W <- W + scale·ΔW in the base weights, then a full diffusers folder.

Mix and export write the layout of a model family (``lora_family``): the one given, else the family of
the base model the LoRA's run or model card records, else the first family whose denoiser the keys name.

peft's per-module scale is ``lora_alpha / r`` (``/ sqrt(r)`` with rslora), with
``rank_pattern`` / ``alpha_pattern`` overriding per module; diffusers stores that config
in the safetensors metadata under ``lora_adapter_metadata`` with ``unet.``-prefixed keys.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from draft_core.errors import DraftError
from draft_core.lora.adapters import WEIGHT_NAME, LoraSpec
from draft_core.models.family import ModelFamily

METADATA_KEY = "lora_adapter_metadata"
# component prefix in diffusers' files -> kohya prefix (SD 1.x: one text encoder, "lora_te"); families set their own.
KOHYA_PREFIXES = ModelFamily.kohya_prefixes
_PEFT_KEY = re.compile(r"(?P<component>[a-z][a-z0-9_]*)\.(?P<module>.+)\.lora_(?P<factor>[AB])\.weight")


@dataclass
class LoraModule:
    """One adapted layer: down [r, in] (peft lora_A), up [out, r] (lora_B) and its scale alpha/r."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass
class LoraFile:
    """A diffusers-format LoRA read back: modules keyed ``component.module_path``, plus its peft configs."""

    modules: dict[str, LoraModule]
    configs: dict[str, dict]  # component -> peft LoraConfig dict (may be empty)
    path: Path


def lora_file_path(path: str | Path) -> Path:
    p = Path(path)
    return p / WEIGHT_NAME if p.is_dir() else p


def _pattern_value(patterns: dict, module: str, default):
    # peft's rule (tuners_utils.get_pattern_key): a pattern matches a module name that ends with it.
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _module_scale(config: dict, module: str, rank: int) -> float:
    if not config:
        return 1.0  # no metadata: diffusers and peft assume lora_alpha = r
    alpha = float(_pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", rank)))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def read_lora(path: str | Path) -> LoraFile:
    """Read a diffusers-format LoRA file (or the folder holding ``pytorch_lora_weights.safetensors``)."""
    from draft_core.lora.validate import read_lora_tensors

    file = lora_file_path(path)
    if not file.is_file():
        raise DraftError(f"no LoRA file at '{file}': give a folder holding {WEIGHT_NAME} or a .safetensors file.")
    tensors, metadata = read_lora_tensors(file)  # checked: format, dtypes, finite values, pairs, ranks, metadata
    flat = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {}
    configs: dict[str, dict] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _PEFT_KEY.fullmatch(key)
        if m is None:
            raise DraftError(
                f"'{file}' holds key '{key}', which is not a diffusers/peft LoRA key (component.module.lora_A/B.weight). "
                f"Only plain LoRA files written by draft or diffusers' save_lora_weights are supported here."
            )
        factors.setdefault(f"{m['component']}.{m['module']}", {})[m["factor"]] = tensor
    modules = {}
    for name, f in factors.items():
        if set(f) != {"A", "B"}:
            raise DraftError(f"'{file}': module '{name}' lacks its lora_{'B' if 'A' in f else 'A'} factor.")
        component, _, module = name.partition(".")
        rank = f["A"].shape[0]
        modules[name] = LoraModule(f["A"], f["B"], _module_scale(configs.get(component, {}), module, rank))
    return LoraFile(modules, configs, file)


# -- mix ----------------------------------------------------------------------------
def mix_loras(specs: Sequence[LoraSpec]) -> tuple[dict[str, torch.Tensor], float, int]:
    """Rank-concatenate ``Σ w_i ΔW_i`` into one LoRA: (peft state dict with component prefixes, scale, rank).

    Each module's merged factors are down = [A_1; A_2; ...] and up = [c_1 B_1, c_2 B_2, ...] with
    c_i = w_i s_i / s, so up·down·s = Σ w_i s_i B_i A_i exactly. s is the common scale of the inputs
    when they share one (so a single LoRA with weight 1 is copied bit for bit), else 1. A LoRA that
    lacks a module contributes zero rows there, so every module has the same rank Σ r_i. LoRAs with
    weight 0 are left out.
    """
    files = [(read_lora(s.path), float(s.scale)) for s in specs if s.scale != 0]
    if not files:
        raise DraftError(
            "lora mix needs at least one LoRA with a non-zero weight (e.g. runs/a/lora:0.5 runs/b/lora:0.75)."
        )
    scales = {m.scale for f, _ in files for m in f.modules.values()}
    common = scales.pop() if len(scales) == 1 else 1.0
    names = sorted(set().union(*(f.modules for f, _ in files)))
    state: dict[str, torch.Tensor] = {}
    for name in names:
        shape_ref = next(f.modules[name] for f, _ in files if name in f.modules)
        downs, ups = [], []
        for f, w in files:
            m = f.modules.get(name)
            rank = next(iter(f.modules.values())).rank
            if m is None:  # zero contribution, same rank everywhere
                downs.append(torch.zeros(rank, shape_ref.down.shape[1], dtype=shape_ref.down.dtype))
                ups.append(torch.zeros(shape_ref.up.shape[0], rank, dtype=shape_ref.up.dtype))
                continue
            if m.down.shape[1] != shape_ref.down.shape[1] or m.up.shape[0] != shape_ref.up.shape[0]:
                raise DraftError(
                    f"LoRA {f.path} has shape {list(m.up.shape)}x{list(m.down.shape)} at '{name}', unlike the others: were they trained on different base models?"
                )
            c = w * m.scale / common
            downs.append(m.down.float())
            ups.append(m.up.float() if c == 1.0 else m.up.float() * c)
        state[f"{name}.lora_A.weight"] = torch.cat(downs).contiguous()
        state[f"{name}.lora_B.weight"] = torch.cat(ups, dim=1).contiguous()
    ranks = {v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise DraftError(
            f"the LoRAs to mix use different ranks in different modules ({sorted(ranks)}); rank_pattern LoRAs are not supported by lora mix."
        )
    return state, common, ranks.pop()


def lora_family(family=None, folders: Sequence[Path] = (), components: Sequence[str] = ()) -> type[ModelFamily]:
    """The model family whose LoRA layout to write: ``family`` (a family class or instance, a family
    name such as "sdxl", or a model: embedded name, diffusers folder or hub id); else the family of the
    base model recorded beside the first of ``folders`` that records one (run config or model card);
    else the first registered family whose denoiser is one of ``components`` (``sd`` for "unet")."""
    from draft_core.lora.loading import base_model_of
    from draft_core.models.loading import check_model, family_of_pipeline
    from draft_core.plugins.discovery import load_registry

    if isinstance(family, ModelFamily):
        return type(family)
    if isinstance(family, type):
        return family
    families = {e.name: e.factory for e in load_registry().entries("model")}
    if isinstance(family, str):
        return families[family] if family in families else check_model(family)
    for folder in folders:
        base = base_model_of(Path(folder))
        if base is not None:
            try:
                return check_model(base)
            except DraftError:
                continue  # not loadable here (not cached, say): the keys decide
    for fam in families.values():
        if getattr(fam, "denoiser_name", None) in components:
            return fam
    return family_of_pipeline(None, "", "sd")


def save_mixed(specs: Sequence[LoraSpec], out: str | Path, family=None) -> Path:
    """Write the mix of ``specs`` as ``out/pytorch_lora_weights.safetensors`` through the family's
    ``save_lora_layers`` hook (loadable as the family's own LoRA files are); each component (denoiser,
    text encoders) is mixed on its own. ``family``: as ``lora_family``."""
    state, scale, rank = mix_loras(specs)
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        component, _, rest = key.partition(".")
        layers.setdefault(component, {})[rest] = tensor
    files = [read_lora(s.path) for s in specs if s.scale != 0]
    fam = lora_family(family, [s.folder for s in specs if s.scale != 0], list(layers))
    if fam._overrides("save_lora_weights") and not fam._overrides("save_lora_layers"):
        raise DraftError(
            f"lora mix: the '{fam.family}' family writes its LoRA files with its own save_lora_weights, "
            f"which takes the denoiser's layers alone; lora mix writes through the classmethod "
            f"save_lora_layers(folder, layers, metadata), which the family does not override."
        )
    metadata: dict[str, dict | None] = {}
    for component, tensors in sorted(layers.items()):
        base = next(
            f.configs.get(component, {}) for f in files if any(n.startswith(f"{component}.") for n in f.modules)
        )
        metadata[component] = {
            **{k: v for k, v in base.items() if k not in ("rank_pattern", "alpha_pattern")},
            "r": rank,
            "lora_alpha": scale * rank,
            "use_rslora": False,
            "target_modules": sorted({k.rsplit(".lora_", 1)[0] for k in tensors}),
            "rank_pattern": {},
            "alpha_pattern": {},
        }
    try:
        return fam.save_lora_layers(out, layers, metadata)
    except DraftError as exc:
        raise DraftError(f"lora mix: {exc}") from None


# -- kohya export ---------------------------------------------------------------------
def kohya_name(name: str, family: type[ModelFamily] = ModelFamily) -> str:
    """``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` ->
    ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`` (the family's names)."""
    component, _, module = name.partition(".")
    return family.kohya_name(component, module)


def to_kohya(lora: LoraFile, family: type[ModelFamily] = ModelFamily) -> dict[str, torch.Tensor]:
    """Kohya keys: ``.lora_down.weight`` [r, in], ``.lora_up.weight`` [out, r], ``.alpha`` (0-dim, float32)
    with alpha = scale · r, so kohya's ΔW = up·down·alpha/r is peft's ΔW."""
    out: dict[str, torch.Tensor] = {}
    for name, m in sorted(lora.modules.items()):
        key = kohya_name(name, family)
        out[f"{key}.lora_down.weight"] = m.down.contiguous()
        out[f"{key}.lora_up.weight"] = m.up.contiguous()
        alpha = m.scale * m.rank
        out[f"{key}.alpha"] = torch.tensor(
            round(alpha) if abs(alpha - round(alpha)) < 1e-9 else alpha, dtype=torch.float32
        )
    return out


def export_kohya(path: str | Path, out: str | Path, family=None) -> Path:
    """Write the LoRA at ``path`` as one kohya .safetensors file ``out`` (``family``: as ``lora_family``)."""
    from safetensors.torch import save_file

    from draft_core.lora.redact import local_path

    lora = read_lora(path)
    fam = lora_family(family, [lora.path.parent], sorted({n.split(".", 1)[0] for n in lora.modules}))
    # A family whose kohya layout is not one key per module (flux fuses q, k, v into BFL's qkv) writes its own.
    family_state = getattr(fam, "kohya_state", None)
    state = family_state(lora.modules) if family_state is not None else to_kohya(lora, fam)
    ranks = sorted({v.shape[0] for k, v in state.items() if k.endswith(".lora_down.weight")})
    alphas = sorted({float(v) for k, v in state.items() if k.endswith(".alpha")})
    metadata = {
        "ss_network_module": getattr(fam, "kohya_network_module", "networks.lora"),
        "ss_network_dim": str(ranks[0]) if len(ranks) == 1 else json.dumps(ranks),
        "ss_network_alpha": f"{alphas[0]:g}" if len(alphas) == 1 else json.dumps(alphas),
        "draft_source": local_path(lora.path),  # relative where it can be: the file may be shared
        "draft_family": fam.family,
    }
    out = Path(out)
    if out.suffix != ".safetensors":
        raise DraftError(f"--out '{out}' must name a .safetensors file (kohya LoRAs are single files).")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=metadata)
    return out


# -- fuse ------------------------------------------------------------------------------
def fuse_lora_into_model(model, specs: Sequence[LoraSpec]) -> None:
    """Fold ``Σ scale_i ΔW_i`` into the denoiser's base weights and drop the adapters (in place)."""
    from draft_core.lora.loading import apply_loras

    names = apply_loras(model, specs, model_name=model.name or None)
    if not names:
        raise DraftError("lora fuse needs at least one --lora PATH[:SCALE].")
    model.denoiser.fuse_lora(adapter_names=names)
    model.denoiser.unload_lora()
