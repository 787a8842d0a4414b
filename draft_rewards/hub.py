"""Where reward weights come from: a local file or folder, or a hub id in the user's Hugging Face cache.

Each resolver either returns a local path or raises ``ModelLoadError`` naming the file or
hub id it expected and the two ways to provide it (a ``--set reward.<option>=`` path, or
the hub cache with ``HF_HUB_OFFLINE=1``). ``HF_HUB_OFFLINE`` is read at call time, so an
offline lookup never touches the network and fails at once when nothing is cached.
"""

from __future__ import annotations

import os
from pathlib import Path

from draft_core.errors import ModelLoadError

_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when the hub must not be contacted (``HF_HUB_OFFLINE``, now or at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _reason(exc: BaseException) -> str:
    """``ExcType: first sentence`` of an exception, on one line."""
    text = " ".join(str(exc).split())
    if len(text) > 160 and ". " in text:
        text = text[: text.index(". ") + 1]
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _how_to_provide(option: str, example: str) -> str:
    mode = "HF_HUB_OFFLINE=1 is set, so only the hub cache was searched" if hub_offline() else "downloading it failed"
    return (
        f"({mode}.) Either give a local copy with --set reward.{option}={example} (in a config: "
        f"reward: {{{option}: {example}}}), or put it in the Hugging Face cache on a machine that reaches "
        f"the hub and run with HF_HUB_OFFLINE=1 (HF_HOME points at the cache)."
    )


def local_path(path: str | os.PathLike, *, reward: str, option: str, expected: str, folder: bool = False) -> Path:
    """``path`` as an existing file (or folder), or ModelLoadError saying what was expected there."""
    p = Path(path).expanduser()
    if p.is_dir() if folder else p.is_file():
        return p
    kind = "folder" if folder else "file"
    state = "does not exist" if not p.exists() else f"is not a {kind}"
    raise ModelLoadError(f"{reward}: reward.{option} '{path}' {state}; it must be {expected}.")


def hub_file(repo_id: str, filename: str, *, reward: str, option: str) -> Path:
    """The cached (or downloaded) ``filename`` of model repo ``repo_id``."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=hub_offline()))
    except Exception as exc:  # every hub failure (missing, offline, HTTP) means the same to the user
        raise _hub_missing(repo_id, filename, _reason(exc), reward=reward, option=option) from exc


def _hub_missing(repo_id: str, filename: str, reason: str, *, reward: str, option: str) -> ModelLoadError:
    return ModelLoadError(
        f"{reward}: could not get '{filename}' of the hub model '{repo_id}' ({reason}). "
        + _how_to_provide(option, f"/path/to/{filename}")
    )


def hub_file_available(repo_id: str, filename: str, *, reward: str, option: str) -> None:
    """``hub_file``'s check without a download: the file is in the cache, or the hub may be asked
    later (online); offline and not cached is the error ``hub_file`` would raise."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, filename), str) or not hub_offline():
        return
    raise _hub_missing(repo_id, filename, "not in the Hugging Face cache", reward=reward, option=option)


def pretrained_available(name: str, *, reward: str, option: str, expected: str) -> None:
    """``from_pretrained``'s check without loading: a local folder holding config.json, or a hub id
    whose config.json is cached (or that the hub may be asked for, online)."""
    source, extra = pretrained_source(name, reward=reward, option=option, expected=expected)
    if not extra:
        if not (Path(source) / "config.json").is_file():
            raise ModelLoadError(f"{reward}: reward.{option} '{name}' holds no config.json; it must be {expected}.")
        return
    hub_file_available(name, "config.json", reward=reward, option=option)


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id: absolute, relative with ./ or ~, or more than one '/'."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def pretrained_source(name: str, *, reward: str, option: str, expected: str) -> tuple[str, dict]:
    """(source, from_pretrained kwargs) for a local folder or a hub id; a missing folder raises."""
    if looks_like_path(name) or Path(name).expanduser().exists():
        return str(local_path(name, reward=reward, option=option, expected=expected, folder=True)), {}
    return name, {"local_files_only": hub_offline()}


def from_pretrained(loader, name: str, *, reward: str, option: str, expected: str, **kwargs):
    """``loader(source, **kwargs)`` (a transformers ``from_pretrained``) with hub errors made clear."""
    source, extra = pretrained_source(name, reward=reward, option=option, expected=expected)
    try:
        return loader(source, **extra, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:  # missing files; a config or weights that do not fit
        where = f"the local folder '{source}'" if not extra else f"the hub model '{name}'"
        hint = _how_to_provide(option, "/path/to/folder") if extra else f"It must be {expected}."
        raise ModelLoadError(f"{reward}: could not load {where} ({_reason(exc)}). {hint}") from exc


def load_state_dict_file(path: Path, *, reward: str, option: str) -> dict:
    """A state dict from ``.safetensors`` or a torch checkpoint (``weights_only=True``).

    A checkpoint dict with a ``state_dict`` entry (open_clip / Lightning training
    checkpoints) gives that entry; a DistributedDataParallel ``module.`` prefix is dropped.
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"{reward}: could not read the checkpoint '{path}' ({_reason(exc)}). It must be a state dict saved "
            f"with torch.save (plain tensors, loadable with weights_only=True) or a .safetensors file; "
            f"give another file with --set reward.{option}=/path/to/file."
        ) from exc
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise ModelLoadError(f"{reward}: the checkpoint '{path}' does not hold a state dict (name -> tensor).")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_strict(module, state_dict: dict, *, reward: str, path: Path, expected: str) -> None:
    """``module.load_state_dict(state_dict)``, with a one-paragraph error naming a few bad keys."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        own, given = set(module.state_dict()), set(state_dict)
        missing, unexpected = sorted(own - given), sorted(given - own)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        detail = "; ".join(parts) if parts else " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"{reward}: the checkpoint '{path}' does not fit {expected}: {detail}.") from exc
