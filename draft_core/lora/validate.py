"""Checking a LoRA file before anything uses it: one reader for every command that takes one.

``sample --lora``, ``lora export | mix | fuse | push`` and ``--resume`` read LoRA tensors through
``read_lora_tensors`` (or check tensors already read with ``check_lora_state``), so a file from a
stranger is refused with one paragraph naming the file and the problem, before anything is written,
uploaded or loaded into a model. What is checked:

- the format: a readable ``.safetensors`` file (not empty, not truncated, a valid header), or a
  ``.pt``/``.bin``/``.pth``/``.ckpt`` state dict of tensors read by ``torch.load(weights_only=True)``;
- every tensor is floating point and finite (a kohya ``.alpha`` may be any real number > 0);
- factors are pairs (down/A with up/B) of 2-D tensors (4-D for convolutions) with one rank;
- diffusers' ``lora_adapter_metadata`` is JSON whose ``r`` / ``rank_pattern`` and ``lora_alpha`` /
  ``alpha_pattern`` agree with the tensors and are positive.

Which layers exist (and whether the keys are LoRA factors at all) is the model's question:
``lora.loading.check_fits`` asks it where there is one, ``lora.files.read_lora`` refuses keys it cannot write.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from draft_core.errors import DraftError

METADATA_KEY = "lora_adapter_metadata"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# The factor pairs of the layouts draft reads: peft (lora_A/lora_B, optionally with an adapter name),
# kohya (lora_down/lora_up) and diffusers' older attention processors (lora.down/up, lora_linear_layer.down/up).
_FACTOR = re.compile(
    r"(?P<module>.+?)(?:\.(?P<peft>lora_[AB])(?:\.[^.]+)?|\.(?P<kohya>lora_down|lora_up)"
    r"|[._](?P<old>lora(?:_linear_layer)?\.(?:down|up)))\.weight"
)
_MAX_SHOWN = 3


class LoraFileError(DraftError):
    """A LoRA file is unreadable, or its tensors or metadata are not a usable LoRA."""


def _fail(shown: str, problems: list[str]) -> LoraFileError:
    more = f" ({len(problems) - 1} more problem(s) of this kind in the file)" if len(problems) > 1 else ""
    return LoraFileError(
        f"{shown} is not a usable LoRA: {problems[0]}{more}. Nothing was read from it; give the LoRA folder or "
        f".safetensors file a draft run, diffusers' save_lora_weights or kohya-ss wrote (or re-export it there)."
    )


def read_lora_tensors(file: str | Path, shown: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of the LoRA ``file``, checked as the module docstring says.
    ``shown``: how the error names the file (default ``LoRA file '<file>'``)."""
    file = Path(file)
    shown = shown or f"LoRA file '{file}'"
    tensors, metadata = _read(file, shown)
    check_lora_state(tensors, shown, metadata)
    return tensors, metadata


def _read(file: Path, shown: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not file.is_file():
        raise LoraFileError(f"{shown}: there is no file at '{file}'; give a LoRA folder or a .safetensors file.")
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise LoraFileError(f"{shown} cannot be read ({exc.strerror or exc}).") from None
    if size == 0:
        raise _fail(shown, ["the file is empty (0 bytes)"])
    suffix = file.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(file, shown), {}
    if suffix != ".safetensors":
        raise LoraFileError(
            f"{shown}: '{file.name}' is not a LoRA file (a .safetensors file, or a .pt/.bin state dict of tensors); "
            f"give a run's lora/ folder, a checkpoint folder, or a .safetensors LoRA."
        )
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # SafetensorError, OSError, an unknown dtype, a header that is not JSON: all "unreadable"
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise _fail(
            shown, [f"it cannot be read as a safetensors file (truncated, or not safetensors at all: {detail})"]
        ) from None
    return tensors, metadata


def _read_pickle(file: Path, shown: str) -> dict[str, torch.Tensor]:
    from draft_core.training.checkpoint import UnsafeFile, safe_torch_load

    try:
        data = safe_torch_load(file)
    except UnsafeFile:
        raise
    except Exception as exc:  # a damaged zip, a truncated pickle, a foreign format: one paragraph whatever torch raises
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise _fail(
            shown, [f"torch.load(weights_only=True) could not read it ({type(exc).__name__}: {detail})"]
        ) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # some trainers wrap the tensors
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())
    ):
        raise _fail(shown, [f"it holds a {type(data).__name__}, not a state dict of named tensors"])
    return data


def check_lora_state(tensors: dict[str, torch.Tensor], shown: str, metadata: dict[str, str] | None = None) -> None:
    """LoraFileError unless ``tensors`` (and diffusers' ``metadata``) make a usable LoRA."""
    if not tensors:
        raise _fail(shown, ["it holds no tensors"])
    problems: list[str] = []
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.endswith(".alpha"):
            if (
                t.numel() != 1
                or t.is_complex()
                or t.dtype == torch.bool
                or not math.isfinite(float(t.reshape(())))
                or float(t.reshape(())) <= 0
            ):
                problems.append(f"'{key}' must be one real number > 0 (kohya's alpha), got {_describe(t)}")
            continue
        if not t.is_floating_point():
            problems.append(
                f"'{key}' holds {str(t.dtype).replace('torch.', '')} values; LoRA weights are floating point"
            )
            continue
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            problems.append(f"'{key}' holds {bad} non-finite value(s) (NaN or Inf) of {t.numel()}")
            continue
        m = _FACTOR.fullmatch(key)
        if m is not None:
            side = (
                "down"
                if (m["peft"] == "lora_A" or m["kohya"] == "lora_down" or (m["old"] or "").endswith("down"))
                else "up"
            )
            pairs.setdefault(m["module"], {})[side] = t
    ranks: dict[str, int] = {}
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"down", "up"}:
            have, lacks = ("down (lora_A)", "up (lora_B)") if "down" in pair else ("up (lora_B)", "down (lora_A)")
            problems.append(f"module '{module}' has its {have} factor but not its {lacks}, so it would change nothing")
            continue
        down, up = pair["down"], pair["up"]
        if down.ndim not in (2, 4) or up.ndim not in (2, 4) or down.ndim != up.ndim:
            problems.append(
                f"module '{module}' has factors of shapes {list(down.shape)} (down) and {list(up.shape)} (up); "
                f"LoRA factors are 2-D ([rank, in] and [out, rank]; 4-D for convolutions)"
            )
        elif down.shape[0] != up.shape[1] or down.shape[0] < 1 or (up.ndim == 4 and tuple(up.shape[2:]) != (1, 1)):
            problems.append(
                f"module '{module}' has factors of shapes {list(down.shape)} (down) and {list(up.shape)} (up), "
                f"whose ranks ({down.shape[0]} and {up.shape[1]}) do not match"
            )
        else:
            ranks[module] = down.shape[0]
    if not problems and metadata and METADATA_KEY in metadata:
        problems += _metadata_problems(metadata[METADATA_KEY], ranks)
    if problems:
        raise _fail(shown, problems)


def _describe(t: torch.Tensor) -> str:
    if t.numel() == 1 and not t.is_complex():
        return f"{t.reshape(()).item()!r} ({str(t.dtype).replace('torch.', '')})"
    return f"a {str(t.dtype).replace('torch.', '')} tensor of shape {list(t.shape)}"


def _pattern(patterns: dict, module: str, default):
    # peft's rule (tuners_utils.get_pattern_key): a pattern matches a module name that ends with it.
    for pattern, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", module):
                return value
        except re.error:
            return default
    return default


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _metadata_problems(text: str, ranks: dict[str, int]) -> list[str]:
    """Diffusers' flat ``{component}.{field}`` peft config against the ranks of the tensors."""
    try:
        flat = json.loads(text)
    except (ValueError, TypeError) as exc:
        return [f"its '{METADATA_KEY}' metadata is not JSON ({exc})"]
    if not isinstance(flat, dict):
        return [f"its '{METADATA_KEY}' metadata is a {type(flat).__name__}, not a mapping of peft config fields"]
    configs: dict[str, dict] = {}
    for key, value in flat.items():
        component, _, field = str(key).partition(".")
        configs.setdefault(component, {})[field or component] = value
    problems = []
    for component, config in sorted(configs.items()):
        where = f"its metadata's '{component}.%s'"
        for field in ("r", "lora_alpha"):
            if field in config and not _positive(config[field]):
                problems.append(f"{where % field} is {config[field]!r}; it must be a number > 0")
        for field in ("rank_pattern", "alpha_pattern"):
            patterns = config.get(field)
            if patterns is None:
                continue
            if not isinstance(patterns, dict) or not all(_positive(v) for v in patterns.values()):
                problems.append(f"{where % field} is {patterns!r}; it must map module names to numbers > 0")
        targets = config.get("target_modules")
        if (
            targets is not None
            and not isinstance(targets, str)
            and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
        ):
            problems.append(f"{where % 'target_modules'} is {targets!r}; it must be a module name or a list of them")
        if "use_rslora" in config and not isinstance(config["use_rslora"], bool):
            problems.append(f"{where % 'use_rslora'} is {config['use_rslora']!r}; it must be true or false")
        if problems or "r" not in config:
            continue
        for module, rank in sorted(ranks.items()):
            comp, _, name = module.partition(".")
            if comp != component:
                continue
            said = _pattern(config.get("rank_pattern") or {}, name, config["r"])
            if said != rank:
                problems.append(
                    f"its metadata says rank {said!r} for '{module}', but the tensors there have rank {rank}"
                )
    return problems


def check_lora_spec(spec) -> None:
    """Check the file of a parsed ``--lora PATH[:SCALE]`` (a ``LoraSpec``) before any model loads."""
    from draft_core.lora.adapters import WEIGHT_NAME

    file = spec.path if spec.path.is_file() else spec.path / WEIGHT_NAME
    read_lora_tensors(file, f"--lora '{spec.path}' ('{file}')")
