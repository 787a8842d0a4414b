"""The memory levers a plan accounts for without tracing them: a quantized frozen base, text
encoders off the device, and the frozen base sharded across processes (FSDP2).

The step itself is traced as it runs (block checkpointing, decode and reward checkpointing,
micro-batches are the runner's own code under the tracer). These three change only where the
frozen weights live and at what size, which is constant over the step, so they are applied to
the traced step as exact byte offsets of its ``base weights`` (a constant shifts the whole
curve, not the moment of its peak):

- ``model.quantize`` (int8: 1 byte per parameter plus, per output channel, a scale in the weight's
  dtype and an int8 zero point, torchao's ``Int8Tensor``; fp8: 1 byte per parameter plus a float32
  scale per output channel, torchao's per-row ``Float8Tensor``; nf4: 4 bits plus one float32 absmax
  per 64 weights, bitsandbytes' layout, 0.5 + 4/64 bytes per parameter): the weights of the
  denoiser's linear layers (the layers diffusers' quantization configs replace, LoRA base
  layers included). Biases, norms, embeddings, convolutions' own kernels apart from linear
  ones, the VAE, the LoRA and the text encoders stay at their dtype. How a layer computes
  differs, and is not an offset: torchao's weight-only layers (int8, fp8) multiply by a copy of
  the weight in the compute dtype, which autograd keeps for the input's gradient, so each
  quantized layer of a differentiable call holds a full-size copy until the backward pass
  reaches it (without block checkpointing, a whole denoiser's linear weights per differentiable
  call). The plan traces that (``dequantizing_linears``). bitsandbytes' 4-bit layers (nf4) keep
  the quantized weight and dequantize again in the backward pass: one layer's temporary, the
  largest, is added as working memory.
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

import contextlib
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from draft_core.errors import ConfigError

#: bytes per quantized parameter, by ``model.quantize``.
QUANT_BYTES: dict[str, float] = {"none": 0.0, "int8": 1.0, "fp8": 1.0, "nf4": 0.5 + 4 / 64}
#: bytes per output channel (a weight's row) beside its parameters: int8's scale (+ the weight's element size) and
#: zero point; fp8's float32 scale. Negligible at published widths (3072 inputs a row), not on the tiny families.
ROW_BYTES: dict[str, int] = {"int8": 1, "fp8": 4}
#: ``model.quantize`` values whose layers compute with a kept full-size copy of the weight (torchao's), traced.
TRACED_DEQUANT = ("int8", "fp8")
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


def stored_bytes(weights: list[torch.Tensor], quantize: str) -> int:
    """The bytes of ``weights`` stored as ``model.quantize`` = ``quantize`` (module doc: what each holds)."""
    rows = sum(w.shape[0] for w in weights)
    per_row = ROW_BYTES.get(quantize, 0) + (
        max((w.element_size() for w in weights), default=0) if quantize == "int8" else 0
    )
    return int(sum(w.numel() for w in weights) * QUANT_BYTES[quantize]) + rows * per_row


def _with_weight_copy(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # torchao's weight-only linear: mm(x, weight converted to x's dtype), a new tensor autograd keeps.
    return torch.nn.functional.linear(x, self.weight.to(x.dtype, copy=True), self.bias)


@contextlib.contextmanager
def dequantizing_linears(model: Any, quantize: str) -> Iterator[None]:
    """Within: the denoiser's quantized linear layers compute as torchao's do under ``model.quantize`` =
    ``quantize`` (int8, fp8), so a traced step allocates and keeps what the quantized step does."""
    weights = {id(w) for w in quantized_weights(model)} if quantize in TRACED_DEQUANT else set()
    layers = [m for m in model.denoiser.modules() if isinstance(m, torch.nn.Linear) and id(m.weight) in weights]
    for layer in layers:
        layer.forward = types.MethodType(_with_weight_copy, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


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


def apply_levers(
    model: Any, quantize: str, offload: bool | str, processes: int = 1, peak: int = 0, budget: int | None = None
) -> Levers:
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
        stored = stored_bytes(weights, quantize)
        levers.quantize_saved = full - stored
        if quantize not in TRACED_DEQUANT:  # bitsandbytes: one layer's dequantized temporary at a time
            levers.dequant_working = max((nbytes(w) for w in weights), default=0)
        compute = (
            "each layer computes with a full-size copy of its weight, kept for the backward pass"
            if quantize in TRACED_DEQUANT
            else "one layer dequantized at a time"
        )
        notes.append(
            f"model.quantize={quantize}: the denoiser's {len(weights)} linear weights stored at "
            f"{stored / max(sum(w.numel() for w in weights), 1):.4g} bytes per parameter with their scales; {compute}"
        )
    enc = text_encoder_bytes(model)
    over = budget is not None and peak > budget
    if enc and offloads(offload, enc, over):
        levers.offload_saved = enc
        notes.append(
            f"model.offload_text_encoders={str(offload).lower()}: the text encoders are off the device "
            f"during training steps"
        )
    if processes > 1:
        frozen = sum(nbytes(p) for n, p in model.denoiser.named_parameters() if "lora_" not in n)
        if quantize != "none":
            frozen -= levers.quantize_saved
        block = largest_block_bytes(model)
        if quantize != "none":
            block = int(block * (frozen / max(frozen + levers.quantize_saved, 1)))
        levers.shard_saved = max(frozen - (frozen // processes + 2 * block), 0)
        notes.append(
            f"--processes {processes}: the denoiser's frozen weights sharded (FSDP2), each device holds "
            f"1/{processes} of them and two all-gathered blocks"
        )
    levers.notes = tuple(notes)
    return levers
