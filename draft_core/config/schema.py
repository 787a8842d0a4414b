"""Run configuration: YAML plus ``--set dotted.key=value`` overrides, validated before any model loads.

Sections are dataclasses with their defaults in the signature. Plugin sections
(``sampler``, ``estimator``, ``reward``) hold a registered ``name`` plus that plugin's
keyword arguments, checked against its factory's signature by the plugin registry.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from draft_core.config.fields import above, at_least, field_problems, key, positive
from draft_core.config.overrides import PLUGIN_SECTIONS, apply_overrides, merge, parse_override  # noqa: F401 (importable from here)
from draft_core.config.ranges import SEED_LIMIT, range_problems
from draft_core.config.values import check_value
from draft_core.config.yaml_files import PRESETS_DIR, preset_path, read_yaml, yaml_load  # noqa: F401 (also importable from here)
from draft_core.errors import ConfigError, did_you_mean, join_problems
from draft_core.lora.adapters import TARGET_SETS
from draft_core.rewarding.spec import reward_problems
from draft_core.training.guards import build_guards

# Names lora.targets accepts: every family has "default" and "attention+ff"; UNet families "cross-attention+ff".
TARGET_SET_NAMES = ("default", *TARGET_SETS)

# -- the sections: each key with its help and range check (draft_core/config/fields.py) ----------------------


def _float16(k: str, v: Any) -> str | None:
    if v not in ("fp16", "float16"):
        return None
    return (
        f"config key '{k}' asks for float16 training, which draft refuses: float16 gradients need loss "
        f"scaling (a grad scaler), which the training loop does not apply, so small reward gradients would "
        f"underflow to zero unnoticed. Use bfloat16 (model.dtype: auto gives it on CUDA, or "
        f"train.mixed_precision: bf16), which needs no scaling, or float32."
    )


def _device(k: str, v: str) -> str | None:
    if v == "auto":
        return None
    import torch

    try:
        torch.device(v)
    except (RuntimeError, ValueError):
        return f"config key '{k}' is {v!r}; give auto, cpu, cuda or cuda:N."
    return None


def _resolution(k: str, res: Any) -> str | None:
    if (
        res is None
        or isinstance(res, int)
        and res > 0
        or isinstance(res, list)
        and len(res) == 2
        and all(isinstance(v, int) and v > 0 for v in res)
    ):
        return None
    return (
        f"config key '{k}' must be [height, width] in pixels (or one side for a square), "
        f"or null for the model's native size; got {res!r}."
    )


@dataclass
class ModelSection:
    """The base model and how its frozen weights are held."""

    name: str = key("tiny-random", "an embedded model, a local diffusers folder, or a hub id")
    family: str | None = key(None, "sd, sdxl, sd3, flux or a plugin's; null: from model_index.json")
    revision: str | None = key(None, "the hub revision (branch, tag or commit) of model.name")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = key(
        "auto",
        "weights' dtype; auto: bfloat16 on CUDA, float32 on CPU; float16 is refused (no loss scaling)",
        check=_float16,
    )
    device: str = key("auto", "auto (the device accelerate picks), cpu, cuda or cuda:N", check=_device)
    quantize: Literal["none", "int8", "nf4", "fp8"] = key(
        "none",
        "frozen base weights stored quantized (int8 and fp8: 1 byte/param; nf4: 4 bits + a scale per 64); "
        "the LoRA is not (draft_core.models.quantize)",
    )
    offload_text_encoders: Literal["auto", "true", "false"] | bool = key(
        "auto",
        "text encoders off the device during training steps (draft_core.training.prompt_cache); auto: where "
        "the plan says they matter (planning.levers.offloads); true/false (YAML booleans too): always / never",
    )
    resolution: int | list[int] | None = key(
        None,
        "[height, width] (or one number for a square) of the generated images; null: the family's native size",
        check=_resolution,
    )


def _alpha(k: str, alpha: float | None) -> str | None:
    if alpha is None or alpha > 0:
        return None
    return (
        f"config key '{k}' must be > 0 (the LoRA's scale is alpha / rank, so {alpha} would "
        f"{'train nothing' if alpha == 0 else 'flip the update'}), or null for alpha = rank; got {alpha}."
    )


def _targets(k: str, targets: str | list[str]) -> str | None:
    if not targets:
        return f"config key '{k}' is an empty list; name the layers to adapt (e.g. [to_q, to_k, to_v, to_out.0])."
    if isinstance(targets, str) and targets not in TARGET_SET_NAMES:
        return (
            f"config key '{k}' is {targets!r}, which is not a named set of layers; give one of "
            f"{', '.join(TARGET_SET_NAMES)} or a list of module-name suffixes (e.g. [attn2.to_q, ff.net.2])."
            f"{did_you_mean(targets, list(TARGET_SET_NAMES))}"
        )
    return None


@dataclass
class LoraSection:
    """The low-rank adapter that is trained."""

    rank: int = key(8, "the LoRA's rank", check=positive)
    alpha: float | None = key(None, "the LoRA's scale is alpha / rank; null: alpha = rank", check=_alpha)
    targets: str | list[str] = key(
        "default",
        "module-name suffixes, or a named set of the model family: default (the family's default; for UNet "
        "families the paper's A.1 set, cross-attention+ff), attention+ff (every attention projection and the "
        "feed-forward layers), cross-attention+ff (UNet families only)",
        check=_targets,
    )


def _template(k: str, template: str) -> str | None:
    try:
        ok = "{}" in template and template.format("x")
    except (IndexError, KeyError, ValueError):
        ok = False
    if ok:
        return None
    return (
        f"config key '{k}' must contain one '{{}}' where the prompt goes and no other "
        f"braces (write '{{{{' for a literal brace), got {template!r}."
    )


def _items(k: str, items: list[str] | None) -> str | None:
    if items is not None and not items:
        return f"config key '{k}' is an empty list; give prompts, or null to use prompts.source."
    return None


@dataclass
class PromptsSection:
    """The training prompts."""

    source: str = key("animals", "a built-in list name or a text file, one prompt per line")
    items: list[str] | None = key(None, "an explicit list of prompts; overrides source", check=_items)
    template: str = key("{}", 'each prompt is put where {} is, e.g. "a photo of a {}"', check=_template)


def _decay(k: str, decay: float | None) -> str | None:
    if decay is None or 0 < decay < 1:
        return None
    return f"config key '{k}' must be in (0, 1) (e.g. 0.999), or null for no average; got {decay}."


@dataclass
class EmaSection:
    """An exponential moving average of the trained weights."""

    decay: float | None = key(
        None, "e.g. 0.999: also keep an average of the trained weights (lora_ema/); null: none", check=_decay
    )


def _seed(k: str, seed: int) -> str | None:
    return (
        None
        if 0 <= seed < SEED_LIMIT
        else f"config key '{k}' must be an integer in [0, 2**64) (torch's seed range), got {seed}."
    )


@dataclass
class ValidationSection:
    """Held-out prompts sampled with fixed seeds during training and scored; off while prompts is null."""

    prompts: str | list[str] | None = key(None, "a prompt list name or file (as prompts.source), or the prompts")
    every: int = key(
        100,
        "steps between validations; also at step 0 and at the end (0: only those two)",
        check=at_least(0, " (0: only at step 0 and the end)"),
    )
    n_per_prompt: int = key(2, "images per prompt", check=positive)
    rewards: list[str | dict] = key(help="names or {name, args, label}; empty: the training reward", factory=list)
    seed: int = key(0, "the validation images' seed", check=_seed)
    batch_size: int = key(8, "images sampled at once", check=positive)


def _betas(k: str, betas: list[float]) -> str | None:
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        return f"config key '{k}' must be two numbers in [0, 1), got {betas}."
    return None


def _budget(k: str, budget: str | int | None) -> str | None:
    if budget is None:
        return None
    from draft_core.planning.budget import parse_bytes

    try:
        parse_bytes(budget, f"config key '{k}'")
    except ConfigError as exc:
        return str(exc)
    return None


@dataclass
class TrainSection:
    """The optimisation, the run folder's pictures and checkpoints, and the guards."""

    steps: int = key(2000, "optimiser steps", check=positive)
    batch_size: int = key(4, "images per step, over all processes (the global batch)", check=positive)
    grad_accum: int = key(1, "micro-batches whose gradients are summed per step", check=positive)
    lr: float = key(4e-4, "AdamW's learning rate", check=above(0))
    weight_decay: float = key(0.1, "AdamW's weight decay", check=at_least(0, " (0: no decay)"))
    betas: list[float] = key(help="AdamW's betas", check=_betas, factory=lambda: [0.9, 0.999])
    grad_clip: float | None = key(
        1.0,
        "the gradient norm is clipped to this; null: no clipping",
        check=above(0, " or null (no clipping)", null=True),
    )
    lr_decay: Literal["none", "sqrt"] = key("none", "sqrt: lr · min(10·step^-0.5, 1) (the paper's)")
    lr_schedule: Literal["constant", "linear", "cosine"] = key("constant", "diffusers' get_scheduler, to train.steps")
    lr_warmup_steps: int = key(0, "linear warm-up from 0 before the schedule", check=at_least(0))
    ema: EmaSection = key(factory=EmaSection)
    seed: int = key(0, "the run's seed (prompts, noise, the LoRA's initial weights)", check=_seed)
    mixed_precision: Literal["no", "bf16", "fp16"] = key(
        "no", "autocast; fp16 is refused (no loss scaling)", check=_float16
    )
    sample_every: int = key(
        100,
        "steps between sample grids (samples/); 0: only before and after training",
        check=at_least(0, " (0: only before and after)"),
    )
    sample_prompts: list[str] | None = key(None, "the grids' prompts; null: the first 10 prompts (one grid row each)")
    sample_per_prompt: int = key(2, "images per prompt in a grid", check=positive)
    checkpoint_every: int = key(100, "steps between checkpoints (and lora/ updates)", check=positive)
    keep_checkpoints: int = key(2, "checkpoints kept in checkpoints/", check=positive)
    max_nonfinite: int = key(5, "stop after this many skipped (non-finite) updates in a row", check=positive)
    log_every: int = key(10, "without a progress bar (--no-progress), a line every this many steps", check=positive)
    trackers: list[Literal["tensorboard", "wandb", "mlflow", "aim"]] = key(
        help="experiment trackers to log to", factory=list
    )
    tracker_project: str = key("draft", "W&B project, MLflow experiment, TensorBoard subfolder")
    validation: ValidationSection = key(factory=ValidationSection)
    stop_when: list[dict] | None = key(
        None,
        "guards against reward hacking (draft_core/training/guards.py): rules over the validation metrics that "
        "stop the run; null: with validation on, val/<first> falling 3 times in a row",
    )
    best_metric: str | None = key("auto", "lora/best/ keeps the best validation's LoRA by this val/ metric; null: none")
    checkpoint_decode: bool | Literal["auto"] = key(
        "auto",
        "recompute the VAE decode in the backward pass instead of keeping its activations; auto: models with a VAE",
    )
    checkpoint_reward: bool | Literal["auto"] = key(
        "auto", "recompute the reward in the backward pass instead of keeping its activations; auto: network rewards"
    )
    checkpoint_denoiser: Literal["auto", "blocks", "step", False] = key(
        "auto",
        "the denoiser in differentiable steps: blocks (diffusers' block checkpointing), step (the whole step, "
        "as estimator.checkpoint: true), false, or auto (blocks where the plan says it saves memory that matters)",
    )
    memory_budget: str | int | None = key(
        None, "e.g. 24GiB: draft train refuses a config predicted to need more", check=_budget
    )


@dataclass
class LearnSection:
    """Sampler hyperparameters trained with the LoRA (paper Appendix B.12)."""

    guidance: bool = key(False, "a guidance weight per sampling step, from sampler.guidance_scale")
    guidance_lr_mult: float = key(50.0, "the schedule's learning rate = train.lr x this", check=above(0))
    negative_prompt: bool = key(False, "a prompt-dependent negative embedding, MLP(self-attention(e))")
    negative_prompt_lr_mult: float = key(1.0, "the negative prompt's learning rate = train.lr x this", check=above(0))
    negative_prompt_heads: int = key(4, "attention heads of the negative prompt's network", check=positive)


@dataclass
class Config:
    model: ModelSection = key(factory=ModelSection)
    lora: LoraSection = key(factory=LoraSection)
    sampler: dict[str, Any] = key(
        help="a registered sampler's name and its arguments (draft plugins); empty: the model family's default "
        "sampler, steps and guidance (filled by draft_core.config.resolve)",
        factory=dict,
    )
    estimator: dict[str, Any] = key(
        help="a registered gradient estimator's name and its arguments (draft plugins)",
        factory=lambda: {"name": "draft-lv", "n": 2},
    )
    reward: dict[str, Any] = key(
        help="a registered reward's name and its arguments, or a weighted sum of rewards (draft plugins)",
        factory=lambda: {"name": "jpeg-compressibility"},
    )
    prompts: PromptsSection = key(factory=PromptsSection)
    train: TrainSection = key(factory=TrainSection)
    learn: LearnSection = key(factory=LearnSection)

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
    for k, value in raw.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        if k not in hints:
            problems.append(
                f"unknown config key '{full}'. Keys accepted in '{prefix or 'the top level'}': "
                f"{', '.join(names)}.{did_you_mean(str(k), names)}"
            )
            continue
        tp = hints[k]
        try:
            if dataclasses.is_dataclass(tp):
                kwargs[k] = _build(tp, value, full, problems)
            elif k in PLUGIN_SECTIONS:
                kwargs[k] = _plugin_section(value, full)
            else:
                kwargs[k] = check_value(value, tp, full)
        except ConfigError as exc:
            problems.append(str(exc))
    return cls(**kwargs)


def _plugin_section(value: Any, key: str) -> dict[str, Any]:
    if isinstance(value, str):  # shorthand: `estimator: draft-k`
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"config section '{key}' must be a mapping with a 'name' key, got {value!r}.")
    return dict(value)


def parse_config(
    path: str | Path | None = None,
    overrides: list[str] = (),
    preset: str | None = None,
    renamed: dict[str, set[str]] | None = None,
) -> Config:
    """Defaults <- preset or YAML file <- overrides, checked for unknown keys and wrong types; not yet
    resolved (``draft_core.config.load_config`` resolves it). renamed: as for ``apply_overrides``."""
    raw: dict = {}
    if preset is not None:
        raw = read_yaml(preset_path(preset))
    if path is not None:
        raw = merge(raw, read_yaml(Path(path)))
    defaults = Config().to_dict()
    merged = merge(defaults, apply_overrides(raw, list(overrides), renamed))
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
    """What ``check_values`` finds wrong, one sentence per problem: each field's own check (beside the
    field above), then the checks that span several keys."""
    problems = field_problems(c)
    if c.train.lr_decay == "sqrt" and c.train.lr_schedule != "constant":
        problems.append(
            f"train.lr_decay is 'sqrt' (the paper's decay) and train.lr_schedule is '{c.train.lr_schedule}', which decays "
            f"too; use one: lr_decay: sqrt with lr_schedule: constant (a warm-up may precede it), or lr_decay: none with "
            f"lr_schedule: {c.train.lr_schedule}."
        )
    try:  # the guards' rules name validation metrics: checked against the labels validation logs
        build_guards(c)
    except ConfigError as exc:
        problems.append(str(exc))
    if not isinstance(c.sampler.get("name", ""), str):  # no name: the model family's default sampler
        problems.append(
            "config section 'sampler' needs a 'name' (a registered sampler; see `draft plugins`), or no name for the model family's default."
        )
    if not isinstance(c.estimator.get("name"), str):
        problems.append("config section 'estimator' needs a 'name' (a registered estimator); see `draft plugins`.")
    problems += reward_problems(c.reward)
    problems += range_problems(c)  # the sampler's steps within the model's schedule, its eta and guidance
    return problems


def plugin_kwargs(section: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Split a plugin section into its name and the factory's keyword arguments."""
    kwargs = {k: v for k, v in section.items() if k != "name"}
    return section["name"], kwargs
