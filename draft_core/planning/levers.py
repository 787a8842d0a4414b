"""The memory levers a plan accounts for without tracing them: a quantized frozen base, text
encoders off the device, and the frozen base sharded across processes (FSDP2).

The step itself is traced as it runs (block checkpointing, decode and reward checkpointing,
micro-batches are the runner's own code under the tracer). These three change only where the
frozen weights live and at what size, which is constant over the step, so they are applied to
the traced step as exact byte offsets of its ``base weights`` (a constant shifts the whole
curve, not the moment of its peak):

- ``model.quantize`` (int8 | fp8: 1 byte per parameter; nf4: 4 bits plus one float32 absmax per
  64 weights, bitsandbytes' layout, 0.5 + 4/64 bytes per parameter): the weights of the
  denoiser's linear layers (the layers diffusers' quantization configs replace, LoRA base
  layers included). Biases, norms, embeddings, convolutions' own kernels apart from linear
  ones, the VAE, the LoRA and the text encoders stay at their dtype. A quantized layer's
  forward and backward dequantize its weight into a temporary of the compute dtype: the
  largest such layer is added as working memory.
- ``model.offload_text_encoders``: the text encoders' weights are not on the device during
  training steps (embeddings cached, or encoded off the device). ``auto`` offloads when they
  hold at least ``OFFLOAD_MATTERS_BYTES`` (SDXL's two CLIPs, SD3's and FLUX's T5), or when a
  budget is given and the plan with them on the device exceeds it.
- ``--processes N``: the denoiser's frozen weights are sharded across N processes (FSDP2):
  each holds 1/N of them plus the all-gathered parameters of the block being computed and of
  the next one (FSDP2's prefetch): two of the largest blocks. The LoRA, its optimiser state
  and the other components are counted whole on each device (conservative), and each process
  runs ``train.batch_size / N`` samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from draft_core.errors import ConfigError

#: bytes per quantized parameter, by ``model.quantize``.
QUANT_BYTES: dict[str, float] = {"none": 0.0, "int8": 1.0, "fp8": 1.0, "nf4": 0.5 + 4 / 64}
#: text encoder weights from which ``offload_text_encoders: auto`` moves them off the device.
OFFLOAD_MATTERS_BYTES = 2**30
TEXT_ENCODER_PREFIX = "text_encoder"
BLOCK_LISTS = ("down_blocks", "up_blocks", "transformer_blocks", "single_transformer_blocks")


@dataclass
class Levers:
    """Byte offsets of the base weights (negative: saved) and what the plan applied."""

    quantize_saved: int = 0
    dequant_working: int = 0
    offload_saved: int = 0
    shard_saved: int = 0
    notes: tuple[str, ...] = ()

    @property
    def delta(self) -> int:
        return self.dequant_working - self.quantize_saved - self.offload_saved - self.shard_saved


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def quantized_weights(model: Any) -> list[torch.Tensor]:
    """The weights ``model.quantize`` stores quantized: the denoiser's linear layers (LoRA factors excluded)."""
    out, seen = [], set()
    for name, module in model.denoiser.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name and id(module.weight) not in seen:
            seen.add(id(module.weight))
            out.append(module.weight)
    return out


def text_encoder_bytes(model: Any) -> int:
    seen: set[int] = set()
    total = 0
    for key, module in model.named_modules().items():
        if key.startswith(TEXT_ENCODER_PREFIX):
            for t in (*module.parameters(), *module.buffers()):
                if id(t) not in seen:
                    seen.add(id(t))
                    total += nbytes(t)
    return total


def offloads(setting: bool | str, encoder_bytes: int, over_budget: bool = False) -> bool:
    """Whether ``model.offload_text_encoders`` = ``setting`` keeps the encoders off the device."""
    return setting is True or (setting == "auto" and (encoder_bytes >= OFFLOAD_MATTERS_BYTES or over_budget))


def largest_block_bytes(model: Any) -> int:
    """The frozen bytes of the denoiser's largest block (FSDP2's unit of all-gathering)."""
    net = model.denoiser
    blocks = [b for name in BLOCK_LISTS for b in getattr(net, name, [])]
    if getattr(net, "mid_block", None) is not None:
        blocks.append(net.mid_block)
    sizes = [sum(nbytes(p) for n, p in b.named_parameters() if "lora_" not in n) for b in blocks]
    return max(sizes, default=0)


def apply_levers(model: Any, quantize: str, offload: bool | str, processes: int = 1,
                 peak: int = 0, budget: int | None = None) -> Levers:
    """The offsets of the three levers for ``model`` (the traced step's, with its LoRA)."""
    if quantize not in QUANT_BYTES:
        raise ConfigError(f"model.quantize must be one of {', '.join(QUANT_BYTES)}, got {quantize!r}.")
    if not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"--processes must be a positive integer, got {processes!r}.")
    levers = Levers()
    notes = []
    weights = quantized_weights(model)
    if quantize != "none":
        full = sum(nbytes(w) for w in weights)
        stored = int(sum(w.numel() for w in weights) * QUANT_BYTES[quantize])
        levers.quantize_saved = full - stored
        levers.dequant_working = max((nbytes(w) for w in weights), default=0)
        notes.append(f"model.quantize={quantize}: the denoiser's {len(weights)} linear weights stored at "
                     f"{QUANT_BYTES[quantize]:.4g} bytes per parameter; one layer dequantized at a time")
    enc = text_encoder_bytes(model)
    over = budget is not None and peak > budget
    if enc and offloads(offload, enc, over):
        levers.offload_saved = enc
        notes.append(f"model.offload_text_encoders={str(offload).lower()}: the text encoders are off the device "
                     f"during training steps")
    if processes > 1:
        frozen = sum(nbytes(p) for n, p in model.denoiser.named_parameters() if "lora_" not in n)
        if quantize != "none":
            frozen -= levers.quantize_saved
        block = largest_block_bytes(model)
        if quantize != "none":
            block = int(block * (frozen / max(frozen + levers.quantize_saved, 1)))
        levers.shard_saved = max(frozen - (frozen // processes + 2 * block), 0)
        notes.append(f"--processes {processes}: the denoiser's frozen weights sharded (FSDP2), each device holds "
                     f"1/{processes} of them and two all-gathered blocks")
    levers.notes = tuple(notes)
    return levers
