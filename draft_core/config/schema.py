"""Run configuration: YAML plus ``--set dotted.key=value`` overrides, validated before any model loads.

Sections are dataclasses with their defaults in the signature. Plugin sections
(``sampler``, ``estimator``, ``reward``) hold a registered ``name`` plus that plugin's
keyword arguments, checked against its factory's signature by the plugin registry.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from draft_core.config.ranges import range_problems
from draft_core.config.unique_keys import UniqueKeyLoader
from draft_core.config.values import check_value
from draft_core.errors import ConfigError, did_you_mean, join_problems
from draft_core.lora import TARGET_SETS
from draft_core.rewarding.spec import reward_problems
from draft_core.training.guards import build_guards

# Names lora.targets accepts: every family has "default" and "attention+ff"; UNet families "cross-attention+ff".
TARGET_SET_NAMES = ("default", *TARGET_SETS)

PRESETS_DIR = Path(__file__).parent / "presets"


class _Loader(UniqueKeyLoader):
    """SafeLoader that also reads 1e-3 and 4e-4 as floats (YAML 1.2; PyYAML's 1.1 rule wants a dot) and
    refuses a key given twice (naming both lines)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


@dataclass
class ModelSection:
    name: str = "tiny-random"  # embedded model, local diffusers folder, or hub id
    family: str | None = None  # sd, sdxl, sd3, flux or a plugin's; None: from model_index.json
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU; float16 refused
    device: str = "auto"  # auto: the device accelerate picks
    # Frozen base weights stored quantized (int8 and fp8: 1 byte/param; nf4: 4 bits + a scale per 64); the LoRA is not
    # (draft_core.models.quantize).
    quantize: Literal["none", "int8", "nf4", "fp8"] = "none"
    # Text encoders off the device during training steps (draft_core.training.prompt_cache); auto: where the plan
    # says they matter (planning.levers.offloads); true/false (YAML booleans too): always / never.
    offload_text_encoders: Literal["auto", "true", "false"] | bool = "auto"
    # [height, width] (or one number for a square) of the generated images; null: the family's native size.
    resolution: int | list[int] | None = None


@dataclass
class LoraSection:
    rank: int = 8
    alpha: float | None = None  # None: alpha = rank
    # module-name suffixes, or a named set of the model family: "default" (the family's default; for
    # UNet families the paper's A.1 set, "cross-attention+ff"), "attention+ff" (every attention
    # projection and the feed-forward layers), "cross-attention+ff" (UNet families only)
    targets: str | list[str] = "default"


@dataclass
class PromptsSection:
    source: str = "animals"  # a built-in list name or a text file, one prompt per line
    items: list[str] | None = None  # an explicit list; overrides source
    template: str = "{}"  # e.g. "a photo of a {}"


@dataclass
class EmaSection:
    decay: float | None = None  # e.g. 0.999: also keep an average of the trained weights (lora_ema/); null: none


@dataclass
class ValidationSection:
    """Held-out prompts sampled with fixed seeds during training and scored; off while prompts is null."""

    prompts: str | list[str] | None = None  # a prompt list name or file (as prompts.source), or the prompts
    every: int = 100  # steps between validations; also at step 0 and at the end (0: only those two)
    n_per_prompt: int = 2
    rewards: list[str | dict] = field(default_factory=list)  # names or {name, args, label}; empty: the training reward
    seed: int = 0
    batch_size: int = 8


@dataclass
class TrainSection:
    steps: int = 2000
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 4e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = 1.0
    lr_decay: Literal["none", "sqrt"] = "none"  # sqrt: lr · min(10·step^-0.5, 1)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # diffusers' get_scheduler, to train.steps
    lr_warmup_steps: int = 0  # linear warm-up from 0 before the schedule
    ema: EmaSection = field(default_factory=EmaSection)
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # fp16 is refused (no loss scaling)
    sample_every: int = 100  # 0: only before and after training
    sample_prompts: list[str] | None = None  # default: the first 10 prompts (one grid row each)
    sample_per_prompt: int = 2
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    max_nonfinite: int = 5  # stop after this many skipped (non-finite) updates in a row
    log_every: int = 10  # without a progress bar (--no-progress), a line every this many steps
    trackers: list[Literal["tensorboard", "wandb", "mlflow", "aim"]] = field(default_factory=list)
    tracker_project: str = "draft"  # W&B project, MLflow experiment, TensorBoard subfolder
    validation: ValidationSection = field(default_factory=ValidationSection)
    # Guards against reward hacking (draft_core/training/guards.py): rules over the validation
    # metrics that stop the run; null: with validation on, val/<first> falling 3 times in a row.
    stop_when: list[dict] | None = None
    best_metric: str | None = "auto"  # lora/best/ keeps the best validation's LoRA by this val/ metric; null: none
    # Recompute the VAE decode / the reward in the backward pass instead of keeping their
    # activations: true, false or auto (decode: models with a VAE; reward: network rewards).
    checkpoint_decode: bool | Literal["auto"] = "auto"
    checkpoint_reward: bool | Literal["auto"] = "auto"
    # The denoiser in differentiable steps: blocks (diffusers' block checkpointing), step (the whole step,
    # as estimator.checkpoint: true), false, or auto (blocks where the plan says it saves memory that matters).
    checkpoint_denoiser: Literal["auto", "blocks", "step", False] = "auto"
    memory_budget: str | int | None = None  # e.g. 24GiB: draft train refuses a config predicted to need more


@dataclass
class LearnSection:
    """Sampler hyperparameters trained with the LoRA (paper Appendix B.12)."""

    guidance: bool = False  # a guidance weight per sampling step, from sampler.guidance_scale
    guidance_lr_mult: float = 50.0  # the schedule's learning rate = train.lr x this
    negative_prompt: bool = False  # a prompt-dependent negative embedding, MLP(self-attention(e))
    negative_prompt_lr_mult: float = 1.0
    negative_prompt_heads: int = 4


PLUGIN_SECTIONS = {"sampler": "sampler", "estimator": "estimator", "reward": "reward"}


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    # Empty: the model family's default sampler, steps and guidance (filled by draft_core.config.resolve).
    sampler: dict[str, Any] = field(default_factory=dict)
    estimator: dict[str, Any] = field(default_factory=lambda: {"name": "draft-lv", "n": 2})
    reward: dict[str, Any] = field(default_factory=lambda: {"name": "jpeg-compressibility"})
    prompts: PromptsSection = field(default_factory=PromptsSection)
    train: TrainSection = field(default_factory=TrainSection)
    learn: LearnSection = field(default_factory=LearnSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# -- parsing ------------------------------------------------------------------------


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """``cls`` from ``raw``; each bad key is added to ``problems`` and left at its default."""
    if not isinstance(raw, dict):
        problems.append(f"config section '{prefix}' must be a mapping of keys to values, got {raw!r}.")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            problems.append(
                f"unknown config key '{full}'. Keys accepted in '{prefix or 'the top level'}': "
                f"{', '.join(names)}.{did_you_mean(str(key), names)}"
            )
            continue
        tp = hints[key]
        try:
            if dataclasses.is_dataclass(tp):
                kwargs[key] = _build(tp, value, full, problems)
            elif key in PLUGIN_SECTIONS:
                kwargs[key] = _plugin_section(value, full)
            else:
                kwargs[key] = check_value(value, tp, full)
        except ConfigError as exc:
            problems.append(str(exc))
    return cls(**kwargs)


def _plugin_section(value: Any, key: str) -> dict[str, Any]:
    if isinstance(value, str):  # shorthand: `estimator: draft-k`
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"config section '{key}' must be a mapping with a 'name' key, got {value!r}.")
    return dict(value)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("sampler", "estimator", "reward"):
            out[k] = _merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict) and "name" not in v and "weights" not in v:
            out[k] = _merge(out[k], v)  # partial plugin section: keep the name, change arguments
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value); the value is read as YAML (50, true, [1, 2])."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}' is not of the form dotted.key=value (e.g. --set train.steps=50).")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set '{text}': '{key}' is not a dotted key such as train.steps.")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(raw: dict, overrides: list[str], renamed: dict[str, set[str]] | None = None) -> dict:
    """Apply ``--set`` overrides. Changing a plugin's name (``--set estimator.name=draft-k``) keeps the
    old plugin's arguments; ``renamed`` (section -> those carried keys) lets the resolver drop the ones
    the new plugin does not accept. Without ``renamed`` they are dropped here."""
    raw = dict(raw)
    parsed = [parse_override(text) for text in overrides]
    renames = [(p, v) for p, v in parsed if len(p) == 2 and p[0] in PLUGIN_SECTIONS and p[1] == "name"]
    for parts, value in renames:
        old = raw.get(parts[0])
        old_name = old.get("name") if isinstance(old, dict) else old
        if old_name != value:
            carried = {k: v for k, v in old.items() if k != "name"} if isinstance(old, dict) and renamed is not None else {}
            raw[parts[0]] = {"name": value, **carried}
            if carried:
                given = {p[1] for p, _ in parsed if len(p) >= 2 and p[0] == parts[0]}
                renamed[parts[0]] = set(carried) - given
    for parts, value in parsed:
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if isinstance(child, str) and part in PLUGIN_SECTIONS:
                child = {"name": child}
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config '{path}' is a folder; give a YAML file (or --resume {path} to continue a run).")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 YAML.") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, got {type(data).__name__}.")
    return data


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset '{name}'. Presets: {', '.join(names)}.{did_you_mean(name, names)}")
    return path


def parse_config(path: str | Path | None = None, overrides: list[str] = (), preset: str | None = None,
                 renamed: dict[str, set[str]] | None = None) -> Config:
    """Defaults <- preset or YAML file <- overrides, checked for unknown keys and wrong types; not yet
    resolved (``draft_core.config.load_config`` resolves it). renamed: as for ``apply_overrides``."""
    raw: dict = {}
    if preset is not None:
        raw = read_yaml(preset_path(preset))
    if path is not None:
        raw = _merge(raw, read_yaml(Path(path)))
    defaults = Config().to_dict()
    merged = _merge(defaults, apply_overrides(raw, list(overrides), renamed))
    problems: list[str] = []
    config = _build(Config, merged, "", problems)
    problems += value_problems(config)
    if problems:
        raise ConfigError(join_problems(problems))
    return config


def check_values(c: Config) -> None:
    """Range checks that types cannot express; every problem is reported at once."""
    problems = value_problems(c)
    if problems:
        raise ConfigError(join_problems(problems))


def value_problems(c: Config) -> list[str]:
    """What ``check_values`` finds wrong, one sentence per problem."""
    problems: list[str] = []
    bad = problems.append
    positive = {
        "train.steps": c.train.steps,
        "train.batch_size": c.train.batch_size,
        "train.grad_accum": c.train.grad_accum,
        "train.sample_per_prompt": c.train.sample_per_prompt,
        "train.checkpoint_every": c.train.checkpoint_every,
        "train.keep_checkpoints": c.train.keep_checkpoints,
        "train.max_nonfinite": c.train.max_nonfinite,
        "train.log_every": c.train.log_every,
        "lora.rank": c.lora.rank,
        "learn.negative_prompt_heads": c.learn.negative_prompt_heads,
    }
    for key, value in positive.items():
        if value < 1:
            bad(f"config key '{key}' must be a positive integer, got {value}.")
    _check_train_extras(c.train, bad)
    try:  # the guards' rules name validation metrics: checked against the labels validation logs
        build_guards(c)
    except ConfigError as exc:
        bad(str(exc))
    for key in ("guidance_lr_mult", "negative_prompt_lr_mult"):
        if getattr(c.learn, key) <= 0:
            bad(f"config key 'learn.{key}' must be > 0, got {getattr(c.learn, key)}.")
    if c.train.lr <= 0:
        bad(f"config key 'train.lr' must be > 0, got {c.train.lr}.")
    if c.train.sample_every < 0:
        bad(f"config key 'train.sample_every' must be >= 0 (0: only before and after), got {c.train.sample_every}.")
    if len(c.train.betas) != 2 or not all(0 <= b < 1 for b in c.train.betas):
        bad(f"config key 'train.betas' must be two numbers in [0, 1), got {c.train.betas}.")
    if c.train.memory_budget is not None:
        from draft_core.planning.budget import parse_bytes

        try:
            parse_bytes(c.train.memory_budget, "config key 'train.memory_budget'")
        except ConfigError as exc:
            bad(str(exc))
    res = c.model.resolution
    if res is not None and not (isinstance(res, int) and res > 0 or isinstance(res, list) and len(res) == 2
                                and all(isinstance(v, int) and v > 0 for v in res)):
        bad(f"config key 'model.resolution' must be [height, width] in pixels (or one side for a square), "
            f"or null for the model's native size; got {res!r}.")
    if c.train.grad_clip is not None and c.train.grad_clip <= 0:
        bad(f"config key 'train.grad_clip' must be > 0 or null (no clipping), got {c.train.grad_clip}.")
    try:
        ok = "{}" in c.prompts.template and c.prompts.template.format("x")
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        bad(
            f"config key 'prompts.template' must contain one '{{}}' where the prompt goes and no other "
            f"braces (write '{{{{' for a literal brace), got {c.prompts.template!r}."
        )
    if not c.lora.targets:
        bad("config key 'lora.targets' is an empty list; name the layers to adapt (e.g. [to_q, to_k, to_v, to_out.0]).")
    if isinstance(c.lora.targets, str) and c.lora.targets not in TARGET_SET_NAMES:
        bad(
            f"config key 'lora.targets' is {c.lora.targets!r}, which is not a named set of layers; give one of "
            f"{', '.join(TARGET_SET_NAMES)} or a list of module-name suffixes (e.g. [attn2.to_q, ff.net.2]).{did_you_mean(c.lora.targets, list(TARGET_SET_NAMES))}"
        )
    half = {"train.mixed_precision": c.train.mixed_precision == "fp16", "model.dtype": c.model.dtype == "float16"}
    for key, half_precision in half.items():
        if half_precision:
            bad(
                f"config key '{key}' asks for float16 training, which draft refuses: float16 gradients need loss "
                f"scaling (a grad scaler), which the training loop does not apply, so small reward gradients would "
                f"underflow to zero unnoticed. Use bfloat16 (model.dtype: auto gives it on CUDA, or "
                f"train.mixed_precision: bf16), which needs no scaling, or float32."
            )
    if c.model.device != "auto":
        import torch

        try:
            torch.device(c.model.device)
        except (RuntimeError, ValueError):
            bad(f"config key 'model.device' is {c.model.device!r}; give auto, cpu, cuda or cuda:N.")
    if c.prompts.items is not None and not c.prompts.items:
        bad("config key 'prompts.items' is an empty list; give prompts, or null to use prompts.source.")
    if not isinstance(c.sampler.get("name", ""), str):  # no name: the model family's default sampler
        bad("config section 'sampler' needs a 'name' (a registered sampler; see `draft plugins`), or no name for the model family's default.")
    for section in ("estimator",):
        if not isinstance(getattr(c, section).get("name"), str):
            bad(f"config section '{section}' needs a 'name' (a registered {section}); see `draft plugins`.")
    problems += reward_problems(c.reward)
    problems += range_problems(c)  # weight decay, seeds, lora.alpha, sampler steps within the schedule
    return problems


def _check_train_extras(t: TrainSection, bad) -> None:
    """Schedules, the weight average and validation."""
    if t.lr_warmup_steps < 0:
        bad(f"config key 'train.lr_warmup_steps' must be >= 0, got {t.lr_warmup_steps}.")
    if t.lr_decay == "sqrt" and t.lr_schedule != "constant":
        bad(
            f"train.lr_decay is 'sqrt' (the paper's decay) and train.lr_schedule is '{t.lr_schedule}', which decays too; "
            f"use one: lr_decay: sqrt with lr_schedule: constant (a warm-up may precede it), or lr_decay: none with "
            f"lr_schedule: {t.lr_schedule}."
        )
    if t.ema.decay is not None and not 0 < t.ema.decay < 1:
        bad(f"config key 'train.ema.decay' must be in (0, 1) (e.g. 0.999), or null for no average; got {t.ema.decay}.")
    v = t.validation
    for key in ("n_per_prompt", "batch_size"):
        if getattr(v, key) < 1:
            bad(f"config key 'train.validation.{key}' must be a positive integer, got {getattr(v, key)}.")
    if v.every < 0:
        bad(f"config key 'train.validation.every' must be >= 0 (0: only at step 0 and the end), got {v.every}.")


def plugin_kwargs(section: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Split a plugin section into its name and the factory's keyword arguments."""
    kwargs = {k: v for k, v in section.items() if k != "name"}
    return section["name"], kwargs
