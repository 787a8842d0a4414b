"""Running a training step on the meta device: shapes without values, as the real device would.

Meta tensors have shapes, dtypes and strides but no data, so a whole step (sampling, decode,
reward, backward, optimiser step) runs on them without weights or memory. What differs from a
real device, and what this module does about it (``simulate`` enters the first three):

- ``MetaValues``: a value a program reads back (``.item()``, ``bool(t)``, ``float(t)``) does
  not exist. It answers with a stand-in: ``True`` for a boolean (``isfinite(x).all()``
  checks pass), ``False`` for the result of ``any`` (``(x < 0).any()`` guards pass), 0.5 for
  a float (inside [0, 1]: image range checks pass), 0 for an integer. Memory and FLOPs never
  depend on these values; a program whose *shapes* depend on data (``nonzero``, boolean
  masks) cannot be planned this way and fails with torch's own error.
- ``device_attention``: on the meta device ``scaled_dot_product_attention`` takes its math
  path, which materialises the [L, L] attention matrix; the real device runs a fused kernel
  that keeps O(L) memory. It calls the fused kernel the device would pick instead: on CPU
  the one PyTorch's CPU dispatcher chooses for those inputs; on CUDA flash attention for
  16-bit inputs without a mask (head size a multiple of 8, at most 256), else the
  memory-efficient kernel, else math (PyTorch's order; cuDNN attention is not modelled).
- ``meta_generators``: a random generator cannot live on the meta device; one asked for there
  is made on the CPU (its numbers are drawn there and moved, as diffusers does for CPU
  generators).
- ``elide_repeats``: sampling calls the UNet with the same shapes dozens of times without
  autograd, and every such call costs the same memory and FLOPs. The first call of each
  signature runs; later ones return empty outputs of the same shapes and account the first
  call's working memory (``MemoryTracer.transient``) and FLOPs. Only calls without autograd
  are elided: a call that builds a graph always runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.weak import WeakIdKeyDictionary

from draft_core.planning.tracer import MemoryTracer

aten = torch.ops.aten


class MetaValues(TorchDispatchMode):
    """Stand-in values for reads of meta tensors (see the module doc).

    It also remembers the output layout of each op it has run on meta tensors of given
    shapes, strides and dtypes (for the whole process): many meta kernels are Python (group
    norm's take milliseconds), and a step runs the same layer shapes over and over. An op that
    returns fresh tensors (no views, nothing in place) then gets fresh empty tensors of the
    remembered layout without running its kernel.
    """

    def __init__(self) -> None:
        super().__init__()
        self._from_any = WeakIdKeyDictionary()
        self._layouts = _LAYOUTS  # shared: a kernel's output layout depends on nothing else
        self._fresh = _FRESH

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and args[0].device.type == "meta":
            t = args[0]
            if t.dtype == torch.bool:
                return t not in self._from_any
            return 0.5 if (t.is_floating_point() or t.is_complex()) else 0
        if func is aten.equal.default and args[0].device.type == "meta":
            return True
        key = self._key(func, args, kwargs)
        layouts = self._layouts.get(key) if key is not None else None
        if layouts is not None:
            out = [torch.empty_strided(shape, stride, dtype=dtype, device="meta") for shape, stride, dtype in layouts]
            return out[0] if len(out) == 1 else tuple(out)
        out = func(*args, **kwargs)
        if func._overloadpacket is aten.any and isinstance(out, torch.Tensor) and out.device.type == "meta":
            self._from_any[out] = True
        elif key is not None:
            self._remember(key, out)
        return out

    def _key(self, func, args, kwargs) -> tuple | None:
        fresh = self._fresh.get(func)
        if fresh is None:
            schema = func._schema
            fresh = self._fresh[func] = (
                bool(schema.returns)
                and not schema.is_mutable
                and all(r.alias_info is None and str(r.type) == "Tensor" for r in schema.returns)
            )
        if not fresh or func is aten.any.default or func._overloadpacket is aten.any:
            return None
        try:
            key = (func, _freeze(args), _freeze(kwargs), torch.get_default_dtype())
            hash(key)
        except (TypeError, _NotMeta):
            return None
        return key

    def _remember(self, key: tuple, out) -> None:
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        layouts = []
        for o in outs:
            if not (isinstance(o, torch.Tensor) and o.device.type == "meta" and o.storage_offset() == 0):
                return
            fresh = torch.empty_strided(o.shape, o.stride(), dtype=o.dtype, device="meta")
            if fresh.untyped_storage().nbytes() != o.untyped_storage().nbytes():
                return  # an output over a larger buffer: not remembered
            layouts.append((tuple(o.shape), o.stride(), o.dtype))
        if len(self._layouts) > _MAX_LAYOUTS:
            self._layouts.clear()
        self._layouts[key] = layouts


_LAYOUTS: dict[tuple, list] = {}
_FRESH: dict[Any, bool] = {}
_MAX_LAYOUTS = 200_000


class _NotMeta(Exception):
    pass


def _freeze(x):
    """A hashable picture of an op's arguments: tensors by shape, strides and dtype."""
    if isinstance(x, torch.Tensor):
        if x.device.type != "meta":
            raise _NotMeta
        return (tuple(x.shape), x.stride(), x.dtype)
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    if isinstance(x, dict):
        return tuple((k, _freeze(v)) for k, v in x.items())
    return x


class _AnyGenerator(type(torch._C.Generator)):
    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, torch._C.Generator)

    def __subclasscheck__(cls, sub) -> bool:
        return issubclass(sub, torch._C.Generator)


class _MetaSafeGenerator(torch._C.Generator, metaclass=_AnyGenerator):
    """``torch.Generator`` within ``meta_generators``: a CPU generator where meta was asked for."""

    def __new__(cls, device="cpu"):
        return torch._C.Generator("cpu" if torch.device(device).type == "meta" else device)


@contextlib.contextmanager
def meta_generators():
    original = torch.Generator
    torch.Generator = _MetaSafeGenerator
    try:
        yield
    finally:
        torch.Generator = original


@contextlib.contextmanager
def simulate(device_type: str):
    """Everything a step on meta tensors needs to run as on ``device_type`` (the module doc)."""
    with MetaValues(), device_attention(device_type), meta_generators():
        yield


# -- attention as the device runs it -------------------------------------------------------------


def _bool_mask_to_additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """As scaled_dot_product_attention does before any kernel: True = attend, False = -inf."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, -math.inf)


def _cpu_backend(q, k, v, mask, dropout_p, is_causal, scale, enable_gqa=False) -> int:
    """The backend PyTorch's CPU dispatcher picks for these inputs, asked with small proxies of
    the same kind (every size but the head count and head size cut to at most 4)."""

    def proxy(t: torch.Tensor, heads_dim: int, keep_last: bool) -> torch.Tensor:
        last = t.dim() - 1
        shape = [s if i == heads_dim or (keep_last and i == last) else min(s, 4) for i, s in enumerate(t.shape)]
        return torch.zeros(shape, dtype=t.dtype).requires_grad_(t.requires_grad)

    heads = q.dim() - 3
    qkv = [proxy(t, heads, True) for t in (q, k, v)]
    m = None if mask is None else proxy(mask, mask.dim() - 3, False)
    return int(torch._fused_sdp_choice(*qkv, m, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa))


def _cuda_backend(q, k, v, mask) -> str:
    d = q.shape[-1]
    if q.dim() != 4 or k.shape[-1] != d or v.shape[-1] != d:
        return "math"
    if q.dtype in (torch.float16, torch.bfloat16) and mask is None and d % 8 == 0 and d <= 256:
        return "flash"
    if q.dtype in (torch.float16, torch.bfloat16, torch.float32) and d % (4 if q.dtype == torch.float32 else 8) == 0:
        return "efficient"
    return "math"


@contextlib.contextmanager
def device_attention(device_type: str):
    """Within the block, attention on meta tensors uses the fused kernel ``device_type`` would."""
    original = F.scaled_dot_product_attention

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if query.device.type != "meta" or dropout_p or (enable_gqa and device_type != "cpu"):
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        mask = _bool_mask_to_additive(attn_mask, query.dtype)
        grad = any(t.requires_grad for t in (query, key, value))
        if device_type == "cpu":  # its flash kernel takes grouped keys and values as they are (enable_gqa)
            if _cpu_backend(query, key, value, mask, dropout_p, is_causal, scale, enable_gqa) == 1:  # FLASH_ATTENTION
                return aten._scaled_dot_product_flash_attention_for_cpu(
                    query, key, value, 0.0, is_causal, attn_mask=mask, scale=scale
                )[0]
        elif device_type == "cuda":
            backend = _cuda_backend(query, key, value, mask)
            if backend == "flash":
                return aten._scaled_dot_product_flash_attention(query, key, value, 0.0, is_causal, False, scale=scale)[
                    0
                ]
            if backend == "efficient":
                bias = (
                    None if mask is None else mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
                )
                return aten._scaled_dot_product_efficient_attention(
                    query, key, value, bias, grad, 0.0, is_causal, scale=scale
                )[0]
        return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def cpu_attention_flops() -> dict:
    """FLOP formulas (of input shapes) for the CPU flash-attention kernels, which torch's counter
    lacks: the same matrix products as the CUDA kernels'."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


# -- elided repeats ------------------------------------------------------------------------------------


def _signature(tree: Any) -> tuple:
    leaves, spec = tree_flatten(tree)
    sig = []
    for x in leaves:
        if isinstance(x, torch.Tensor):
            sig.append((tuple(x.shape), x.dtype, x.device.type))
        elif x is None or isinstance(x, (bool, int, float, str)):
            sig.append(x)
        else:
            sig.append(type(x).__name__)
    return (str(spec), tuple(sig))


@contextlib.contextmanager
def elide_repeats(module: torch.nn.Module, tracer: MemoryTracer, device: str, state: Callable[[], Any] = lambda: None):
    """Within the block, repeated no-autograd calls of ``module`` on meta tensors are elided
    (module doc). ``tracer``: the active tracer; ``state``: whatever else changes a call's cost
    (e.g. whether LoRA adapters are on)."""
    original = module.forward
    seen: dict[tuple, tuple] = {}

    def forward(*args, **kwargs):
        leaves = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        if torch.is_grad_enabled() or not leaves or any(x.device.type != "meta" for x in leaves):
            return original(*args, **kwargs)
        key = (_signature((args, kwargs)), state())
        if key not in seen:
            before = tracer.live(device)
            tracer.reset_high_water(device)
            flops = tracer.flops
            out = original(*args, **kwargs)
            outs, spec = tree_flatten(out)
            kinds = [
                (True, (o.shape, o.stride(), o.dtype, o.device)) if isinstance(o, torch.Tensor) else (False, o)
                for o in outs
            ]
            seen[key] = (spec, kinds, tracer.high_water(device) - before, tracer.flops - flops)
            return out
        spec, kinds, working, flops = seen[key]
        tracer.transient(device, working)
        tracer.flops += flops
        outs = [torch.empty_strided(v[0], v[1], dtype=v[2], device=v[3]) if is_tensor else v for is_tensor, v in kinds]
        return tree_unflatten(outs, spec)

    module.forward = forward
    try:
        yield
    finally:
        del module.forward  # the class's method again
