"""Text encoders off the device (``model.offload_text_encoders``): a run's prompts encoded once, cached.

A run's prompt set is fixed (the training prompts, the grid's and validation's), so its embeddings
are computed once at setup, kept on the host and written to ``prompt_cache/<key>.safetensors`` in
the run folder; the text encoders then live on the CPU and are never on the device during a
training step. A resumed run reads the file back and does not run the encoders at all. A prompt
met later (one not in the set) moves the encoders to the device for that one batch and back.

The key is a hash of what decides the embeddings: the family, the model's dtype, each tokenizer's
class and length, and each text encoder's class, config and a strided sample of every weight
tensor's values (a different checkpoint or fine-tune changes the key, at the cost of reading a
few values per tensor, not the whole encoder).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from draft_core.models.conditioning import TENSOR_FIELDS, Conditioning
from draft_core.rundir import RunDir

#: where offloaded text encoders live (tests move them to ``meta`` to prove that nothing runs them).
HOME = torch.device("cpu")
#: values sampled from each weight tensor for the key.
SAMPLES_PER_TENSOR = 64
#: prompts encoded together when filling the cache.
ENCODE_BATCH = 16


def wants_offload(setting: str | bool, device: torch.device, encoder_bytes: int | None = None) -> bool:
    """``model.offload_text_encoders``: auto offloads on any device but the CPU (where it changes nothing)
    when the encoders weigh what ``draft plan`` counts as mattering (planning.levers.offloads: 1 GiB;
    ``encoder_bytes`` None: assume they do), so the run does what its plan assumed."""
    from draft_core.planning.levers import OFFLOAD_MATTERS_BYTES, offloads

    if setting in (True, "true"):
        return True
    if setting in (False, "false"):
        return False
    heavy = OFFLOAD_MATTERS_BYTES if encoder_bytes is None else encoder_bytes
    return torch.device(device).type != "cpu" and offloads("auto", heavy)


def text_encoders(model: Any) -> dict[str, torch.nn.Module]:
    """The model's text encoders by component name (``text_encoder``, ``text_encoder_2``, ...)."""
    return {k: m for k, m in model.named_modules().items() if k.startswith("text_encoder")}


def encoder_key(model: Any) -> str:
    """A hash of everything the embeddings depend on (the module docstring says what)."""
    h = hashlib.sha256()
    h.update(f"{model.family}|{model.dtype}|{getattr(model, 'max_sequence_length', '')}".encode())
    for name in sorted(vars(model)):
        if name.startswith("tokenizer"):
            tok = getattr(model, name)
            h.update(f"{name}|{type(tok).__name__}|{getattr(tok, 'model_max_length', '')}|{len(tok)}".encode())
    for name, encoder in sorted(text_encoders(model).items()):
        config = getattr(encoder, "config", None)
        to_json = getattr(config, "to_json_string", None)  # transformers' configs; repr for any other
        text = to_json() if callable(to_json) else repr(config)
        h.update(f"{name}|{type(encoder).__name__}|{text}".encode())
        with torch.no_grad():
            for pname, p in encoder.state_dict().items():
                flat = p.detach().reshape(-1)
                sample = flat[:: max(1, flat.numel() // SAMPLES_PER_TENSOR)][:SAMPLES_PER_TENSOR]
                h.update(f"{pname}|{tuple(p.shape)}|{p.dtype}".encode())
                h.update(sample.to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


class PromptCache:
    """Encoded prompts of one model, by prompt: per-prompt rows plus the shared empty-prompt rows.

    ``install`` replaces the model's ``encode_prompts`` with ``encode``, which assembles a batch from
    the cache (on the denoiser's device) and encodes only what is missing.
    """

    def __init__(self, model: Any, key: str) -> None:
        self.model = model
        self.key = key
        self.rows: dict[str, dict[str, torch.Tensor]] = {}
        self.shared: dict[str, torch.Tensor] = {}
        self.encoded = 0  # prompts this process ran the encoders on
        self._encode = model.encode_prompts

    # -- filling -------------------------------------------------------------------------
    def add(self, prompts: Iterable[str]) -> list[str]:
        """Encode the prompts not cached yet (``ENCODE_BATCH`` at a time); returns those encoded."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.rows))
        if not missing:
            return []
        with self._on_device():
            for i in range(0, len(missing), ENCODE_BATCH):
                chunk = missing[i : i + ENCODE_BATCH]
                with torch.no_grad():
                    cond = self._encode(chunk)
                self._store(chunk, cond)
        self.encoded += len(missing)
        return missing

    def _store(self, prompts: list[str], cond: Conditioning) -> None:
        for name, value in cond.tensors().items():
            value = value.detach().to("cpu")  # the cache lives on the host
            if name.startswith("uncond"):  # the empty prompt: [1, ...], shared by every batch
                self.shared[name] = value[:1]
                continue
            for j, prompt in enumerate(prompts):
                self.rows.setdefault(prompt, {})[name] = value[j : j + 1].clone()

    def _on_device(self) -> _EncodersOn:
        return _EncodersOn(self.model)

    # -- use -----------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """What the model's ``encode_prompts`` returns, from the cache (on the denoiser's device)."""
        prompts = list(prompts)
        self.add(prompts)
        device = self.model.device
        tensors = {name: torch.cat([self.rows[p][name] for p in prompts]).to(device) for name in self.rows[prompts[0]]}
        tensors.update({name: v.to(device) for name, v in self.shared.items()})
        return Conditioning.from_tensors(tensors, prompts)

    def install(self) -> None:
        self.model.encode_prompts = self.encode

    # -- the run folder ------------------------------------------------------------------
    def path(self, run_dir: Path) -> Path:
        return RunDir(run_dir).prompt_cache / f"{self.key}.safetensors"

    def load(self, run_dir: Path) -> bool:
        """Read the run folder's cache for this key, if it is there; True when read."""
        path = self.path(run_dir)
        if not path.is_file():
            return False
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            prompts = json.loads((f.metadata() or {}).get("prompts", "[]"))
        tensors = load_file(str(path))
        for name in TENSOR_FIELDS:
            if f"shared/{name}" in tensors:
                self.shared[name] = tensors[f"shared/{name}"]
        for i, prompt in enumerate(prompts):
            self.rows[prompt] = {n: tensors[f"{i}/{n}"] for n in TENSOR_FIELDS if f"{i}/{n}" in tensors}
        return True

    def save(self, run_dir: Path) -> Path:
        """Write every cached prompt (atomically: a reader never sees half a file)."""
        path = self.path(run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        prompts = list(self.rows)
        tensors = {f"{i}/{n}": v.contiguous() for i, p in enumerate(prompts) for n, v in self.rows[p].items()}
        tensors.update({f"shared/{n}": v.contiguous() for n, v in self.shared.items()})
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"prompts": json.dumps(prompts), "key": self.key})
        os.replace(tmp, path)
        return path


class _EncodersOn:
    """Within: the text encoders on the denoiser's device (if they live elsewhere); after: back home."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.encoders = text_encoders(model)
        self.homes = {name: _device_of(m) for name, m in self.encoders.items()}

    def __enter__(self) -> None:
        target = self.model.device
        for name, module in self.encoders.items():
            if self.homes[name] != target and self.homes[name].type != "meta":
                module.to(target)

    def __exit__(self, *exc: object) -> None:
        for name, module in self.encoders.items():
            if self.homes[name].type != "meta":
                module.to(self.homes[name])


def _device_of(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return HOME


def offload_prompts(model: Any, config: Any, components: Any, run_dir: Path, write: bool = True) -> PromptCache | None:
    """Set up ``model.offload_text_encoders`` for a run: None when off; otherwise the run's prompts
    (``run_prompts``) encoded or read from ``run_dir``'s cache, the encoders moved to ``HOME`` and the
    cache installed as the model's ``encode_prompts``. ``write``: this process writes the run folder."""
    encoder_bytes = sum(p.numel() * p.element_size() for m in text_encoders(model).values() for p in m.parameters())
    if model.device.type == "meta" or not wants_offload(
        config.model.offload_text_encoders, model.device, encoder_bytes
    ):
        return None  # a plan's meta model (draft plan counts the setting itself)
    cache = PromptCache(model, encoder_key(model))
    cache.load(run_dir)
    new = cache.add(run_prompts(config, components))
    for module in text_encoders(model).values():
        module.to(HOME)
    cache.install()
    if write and (new or not cache.path(run_dir).is_file()):
        cache.save(run_dir)
    return cache


def run_prompts(config: Any, components: Any) -> list[str]:
    """Every prompt a run encodes: training's, the grid's (``train.sample_prompts``) and validation's."""
    t = config.train
    prompts = list(components.prompts) + list(t.sample_prompts or components.prompts[:10])
    validation = getattr(components, "validation", None)
    if validation is not None:
        prompts += list(validation.prompts)
    return list(dict.fromkeys(prompts + [""]))
