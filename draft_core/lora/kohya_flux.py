"""FLUX LoRAs in the kohya layout ComfyUI and kohya-ss/sd-scripts (``networks/lora_flux.py``) read and write.

Keys name Black Forest Labs' original modules: ``lora_unet_double_blocks_{i}_img_attn_qkv``,
``lora_unet_single_blocks_{i}_linear1``, ... with ``.lora_down.weight`` [r, in], ``.lora_up.weight``
[out, r] and ``.alpha`` (ΔW = up·down·alpha/r). In BFL's model the attention's q, k and v are ONE
linear layer (``qkv``), and a single block's q, k, v and MLP input are one (``linear1``), where diffusers
has separate layers. A group of separate LoRAs (A_j [r, in], B_j [out_j, r], scale s) is written as
one LoRA of rank n·r with

    down = [A_1; ...; A_n]  [n·r, in],   up = blockdiag(B_1, ..., B_n)  [Σ out_j, n·r],   alpha = s·n·r,

so up·down·alpha/(n·r) stacks the n deltas s·B_j·A_j exactly. diffusers' own reader
(``_convert_kohya_flux_lora_to_diffusers``, which ``FluxPipeline.lora_state_dict`` uses) recognises the
block-diagonal ``up`` ("sparse"), and splits it back into the n separate factors bit for bit when s = 1.
Members of a group the LoRA does not train are written as zero blocks of the same rank. Its reader
assumes FLUX.1's widths for ``linear1`` (3 x 3072 + 12288); qkv groups split evenly at any width.
"""

from __future__ import annotations

import re

import torch

from draft_core.errors import DraftError

NETWORK_MODULE = "networks.lora_flux"  # kohya sd-scripts' FLUX LoRA module (ss_network_module)

# diffusers module inside a block -> (BFL layer, position in its fused group or None)
DOUBLE = {
    "attn.to_q": ("img_attn_qkv", 0),
    "attn.to_k": ("img_attn_qkv", 1),
    "attn.to_v": ("img_attn_qkv", 2),
    "attn.to_out.0": ("img_attn_proj", None),
    "ff.net.0.proj": ("img_mlp_0", None),
    "ff.net.2": ("img_mlp_2", None),
    "norm1.linear": ("img_mod_lin", None),
    "attn.add_q_proj": ("txt_attn_qkv", 0),
    "attn.add_k_proj": ("txt_attn_qkv", 1),
    "attn.add_v_proj": ("txt_attn_qkv", 2),
    "attn.to_add_out": ("txt_attn_proj", None),
    "ff_context.net.0.proj": ("txt_mlp_0", None),
    "ff_context.net.2": ("txt_mlp_2", None),
    "norm1_context.linear": ("txt_mod_lin", None),
}
SINGLE = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None),
    "norm.linear": ("modulation_lin", None),
}
GROUP_SIZE = {"img_attn_qkv": 3, "txt_attn_qkv": 3, "linear1": 4}
MLP_RATIO = 4  # a single block's MLP width / its model width (FLUX.1's, which diffusers' reader assumes)
_BLOCK = re.compile(r"(?P<kind>transformer_blocks|single_transformer_blocks)\.(?P<i>\d+)\.(?P<rest>.+)")


def bfl_name(name: str) -> tuple[str, int | None]:
    """``transformer.transformer_blocks.0.attn.to_q`` -> (``lora_unet_double_blocks_0_img_attn_qkv``, 0)."""
    component, _, path = name.partition(".")
    m = _BLOCK.fullmatch(path) if component == "transformer" else None
    table = (DOUBLE if m["kind"] == "transformer_blocks" else SINGLE) if m else {}
    if m is None or m["rest"] not in table:
        raise DraftError(
            f"cannot export LoRA module '{name}' in the kohya FLUX layout: it names BFL's double and single "
            f"blocks only ({', '.join(sorted(set(DOUBLE) | set(SINGLE)))} inside transformer_blocks.N / "
            f"single_transformer_blocks.N). Train with lora.targets attention+ff, or share the diffusers file as it is."
        )
    layer, member = table[m["rest"]]
    kind = "double_blocks" if m["kind"] == "transformer_blocks" else "single_blocks"
    return f"lora_unet_{kind}_{m['i']}_{layer}", member


def _member_out(layer: str, member: int, width: int) -> int:
    """Output size of a fused group's member (width: the block's input size, FLUX.1's 3072)."""
    return width * MLP_RATIO if layer.endswith("linear1") and member == 3 else width


def _alpha(value: float) -> torch.Tensor:
    return torch.tensor(round(value) if abs(value - round(value)) < 1e-9 else value, dtype=torch.float32)


def flux_kohya_state(modules: dict) -> dict[str, torch.Tensor]:
    """Kohya FLUX keys from ``modules`` (``transformer.``-prefixed names -> draft_core.lora.files.LoraModule)."""
    groups: dict[str, dict] = {}
    for name, module in sorted(modules.items()):
        key, member = bfl_name(name)
        groups.setdefault(key, {})[member] = module
    out: dict[str, torch.Tensor] = {}
    for key, members in groups.items():
        if None in members:
            m = members[None]
            down, up, alpha = m.down, m.up, m.scale * m.rank
        else:
            down, up, alpha = _fuse(key, members)
        out[f"{key}.lora_down.weight"] = down.contiguous()
        out[f"{key}.lora_up.weight"] = up.contiguous()
        out[f"{key}.alpha"] = _alpha(alpha)
    return out


def _fuse(key: str, members: dict) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One group's concatenated down, block-diagonal up and alpha (see the module docstring)."""
    n = GROUP_SIZE[key.split("_", 5)[5]]  # lora_unet_{double,single}_blocks_{i}_{layer}
    ranks = {m.rank for m in members.values()}
    if len(ranks) != 1:
        raise DraftError(
            f"cannot fuse {key}'s LoRAs for the kohya FLUX layout: its q, k, v parts have ranks {sorted(ranks)}; "
            f"kohya's fused layer needs one rank."
        )
    rank = ranks.pop()
    ref = next(iter(members.values()))
    scale, width, dtype = ref.scale, ref.down.shape[1], ref.down.dtype
    downs, ups = [], []
    for j in range(n):
        m = members.get(j)
        if m is None:
            downs.append(torch.zeros(rank, width, dtype=dtype))
            ups.append(torch.zeros(_member_out(key, j, width), rank, dtype=dtype))
            continue
        downs.append(m.down)
        ups.append(m.up if m.scale == scale else m.up * (m.scale / scale))
    return torch.cat(downs), torch.block_diag(*ups), scale * n * rank
