"""A dispatch mode that tallies the bytes of live tensor storage per device, and the peak.

Every tensor an aten op returns is looked up by its storage: a storage seen for the first
time adds its ``nbytes`` to its device's tally, and a weak reference to the storage takes
them off again when the storage is freed (torch keeps one Python object per storage, so the
reference dies exactly when the memory would be released). Views share their base's
storage and cost nothing. Tensors that existed before the mode started (weights, LoRA,
optimiser state) are added with ``register`` under a category; everything allocated while
tracing is ``activations`` until relabelled (``relabel``, e.g. optimiser state created by the
step).

What it counts is what PyTorch's allocator is asked for at the aten level, tensor by tensor:
bytes *allocated*, not what a caching allocator reserves (CUDA rounds blocks up to 512 B and
keeps freed blocks for reuse), nor workspaces that kernels allocate internally (cuDNN, oneDNN).

The tally is recorded as a list of events (allocation or release of one storage), so a
peak can be asked for afterwards, with a breakdown by category at that moment, and for the
*steady state* of a training step: storages the step creates and keeps (optimiser state on
the first step, a critic, caches) are then counted as present from the step's start, as they
are on every later step.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

ACTIVATIONS = "activations"


@dataclass
class _Record:
    device: str
    nbytes: int
    category: str
    start: int  # index of its allocation event; -1 for tensors registered before tracing
    alive: bool = True


@dataclass
class Peak:
    """The peak of one device: total bytes and their split by category at that moment."""

    device: str
    total: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    event: int = -1  # the event at which it happened (-1: before any)
    start: int = 0  # bytes live when the traced span began (weights and other state)


class MemoryTracer(TorchDispatchMode):
    """``with MemoryTracer() as tr: ...`` then ``tr.peak("cuda:0")``; see the module doc.

    It also adds up FLOPs (``flops``) with the formulas of torch's ``FlopCounterMode`` (its
    registry, plus ``flop_formulas``: op -> formula of the input shapes), as that counter
    would, without its per-module bookkeeping (which would double the cost of a traced step).
    """

    def __init__(self, flop_formulas: dict | None = None) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry, shape_wrapper

        self._formulas = {**flop_registry, **{k: shape_wrapper(v) for k, v in (flop_formulas or {}).items()}}
        self.flops = 0
        self.records: list[_Record] = []
        self.events: list[tuple[int, int]] = []  # (record index, +bytes or -bytes)
        self._by_storage: dict[int, int] = {}  # id(storage) -> record index, while alive
        self._refs: dict[int, weakref.ref] = {}
        self._live: dict[str, int] = defaultdict(int)
        self._high: dict[str, int] = defaultdict(int)
        self._mark = 0

    # -- the tally ----------------------------------------------------------------------
    def live(self, device: str) -> int:
        """Bytes live on ``device`` now."""
        return self._live[str(device)]

    def high_water(self, device: str) -> int:
        """The highest tally of ``device`` since ``reset_high_water`` (for elided repeats)."""
        return self._high[str(device)]

    def reset_high_water(self, device: str) -> None:
        self._high[str(device)] = self._live[str(device)]

    def register(self, tensors, category: str) -> None:
        """Count ``tensors`` (already allocated) under ``category``, as present from the start."""
        for t in tensors:
            self._track(t, category, pre=True)

    def relabel(self, tensors, category: str) -> None:
        """Put the live storages behind ``tensors`` in ``category`` (e.g. optimiser state)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                idx = self._by_storage.get(id(_storage(t)))
                if idx is not None:
                    self.records[idx].category = category

    def transient(self, device: str, nbytes: int, category: str = ACTIVATIONS) -> None:
        """Account ``nbytes`` allocated and released at once (an elided repeat's working memory)."""
        if nbytes <= 0:
            return
        idx = len(self.records)
        self.records.append(_Record(str(device), nbytes, category, len(self.events), alive=False))
        self._event(idx, nbytes)
        self._event(idx, -nbytes)

    def mark(self) -> int:
        """Start a new phase: ``peak(..., since_mark=True)`` looks only at later events."""
        self._mark = len(self.events)
        return self._mark

    def _event(self, idx: int, delta: int) -> None:
        self.events.append((idx, delta))
        dev = self.records[idx].device
        self._live[dev] += delta
        if self._live[dev] > self._high[dev]:
            self._high[dev] = self._live[dev]

    def _track(self, t: torch.Tensor, category: str = ACTIVATIONS, pre: bool = False) -> None:
        if is_traceable_wrapper_subclass(t):
            # A wrapper (a quantized weight: torchao's int8 values, scales and zero points) holds its bytes in
            # its inner tensors; its own storage is a stand-in of its outer shape and dtype, sized as unquantized.
            for name in t.__tensor_flatten__()[0]:
                self._track(getattr(t, name), category, pre)
            return
        st = _storage(t)
        if st is None:
            return
        key = id(st)
        idx = self._by_storage.get(key)
        nbytes = st.nbytes()
        if idx is not None:
            rec = self.records[idx]
            if rec.nbytes != nbytes:  # resized in place
                self._event(idx, nbytes - rec.nbytes)
                rec.nbytes = nbytes
            if pre:
                rec.category = category
            return
        idx = len(self.records)
        self.records.append(_Record(str(t.device), nbytes, category, -1 if pre else len(self.events)))
        self._by_storage[key] = idx
        self._refs[key] = weakref.ref(st, lambda _r, key=key: self._release(key))
        self._event(idx, nbytes)

    def _release(self, key: int) -> None:
        idx = self._by_storage.pop(key, None)
        self._refs.pop(key, None)
        if idx is None:
            return
        rec = self.records[idx]
        rec.alive = False
        self._event(idx, -rec.nbytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self._formulas.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    # -- the peak afterwards --------------------------------------------------------------
    def peak(self, device: str, *, steady: bool = False, since_mark: bool = False) -> Peak:
        """The highest tally of ``device``, with its breakdown by category.

        steady: storages allocated while tracing and still alive at the end count from the
        start (the steady state of a repeated step). since_mark: only events after ``mark()``,
        starting from what was live at the mark.
        """
        device = str(device)
        kept = {i for i, r in enumerate(self.records) if steady and r.alive and r.start >= 0 and r.device == device}
        cats: dict[str, int] = defaultdict(int)
        for i in kept:
            cats[self.records[i].category] += self.records[i].nbytes
        first = self._mark if since_mark else 0
        for idx, delta in self.events[:first]:
            if self.records[idx].device == device and idx not in kept:
                cats[self.records[idx].category] += delta
        total = sum(cats.values())
        best = Peak(device, total, {k: v for k, v in cats.items() if v}, first - 1, total)
        for n in range(first, len(self.events)):
            idx, delta = self.events[n]
            rec = self.records[idx]
            if rec.device != device or idx in kept:
                continue
            cats[rec.category] += delta
            total += delta
            if total > best.total:
                best = Peak(device, total, {k: v for k, v in cats.items() if v}, n, best.start)
        return best


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or other storage-less tensors
        return None
