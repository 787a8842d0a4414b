"""The reward section of a config, read one way: a list of weighted terms.

A config gives either one reward (``reward: {name: hpsv2, dtype: float32}``) or a weighted sum
(``reward: {weights: {hpsv2: 1.0, jpeg-compressibility: 0.5}, args: {jpeg-compressibility: {quality: 30}}}``).
Both are read here as terms ``(name, weight, arguments, config key)``: a single reward is one term
of weight 1 whose arguments sit beside its name. Every other module (building, planning, labels,
provenance, the model card, the report) goes through ``reward_terms`` and ``reward_label`` instead of
telling the two shapes apart itself. Imports nothing heavy: ``draft_core.config`` validates with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RewardTerm",
    "is_weighted",
    "reward_label",
    "reward_problems",
    "reward_terms",
    "set_term_argument",
    "term_label",
    "unknown_term_arguments",
]


@dataclass(frozen=True)
class RewardTerm:
    """One reward of the section: registered ``name``, ``weight``, the factory's ``kwargs`` and the
    config ``key`` those arguments are read from (``reward`` or ``reward.args.<name>``)."""

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: str = "reward"


def is_weighted(section: dict[str, Any]) -> bool:
    """Whether the section is the weighted-sum shape (``weights``/``args``), rather than one ``name``."""
    return "weights" in section


def reward_terms(section: dict[str, Any]) -> list[RewardTerm]:
    """The section's terms in config order; a single reward is one term of weight 1. Assumes a
    section that ``reward_problems`` accepts."""
    if not is_weighted(section):
        kwargs = {k: v for k, v in section.items() if k != "name"}
        return [RewardTerm(str(section.get("name")), 1.0, kwargs, "reward")]
    args = section.get("args") or {}
    return [
        RewardTerm(name, float(w), dict(args.get(name) or {}), f"reward.args.{name}")
        for name, w in section["weights"].items()
    ]


def term_label(term: RewardTerm, *, weighted: bool) -> str:
    """``jpeg-compressibility(quality=30)``, with ``0.5·`` in front inside a weighted sum."""
    args = ", ".join(f"{k}={v!r}" for k, v in term.kwargs.items())
    label = f"{term.name}({args})" if args else term.name
    return f"{term.weight:g}·{label}" if weighted else label


def reward_label(section: dict[str, Any]) -> str:
    """The one label of a reward section, for banners, plans, reports and model cards:
    ``hpsv2(dtype='float32')`` or ``1·hpsv2 + 0.5·jpeg-compressibility(quality=30)``."""
    weighted = is_weighted(section)
    return " + ".join(term_label(t, weighted=weighted) for t in reward_terms(section))


def set_term_argument(section: dict[str, Any], name: str, key: str, value: Any) -> None:
    """Set argument ``key`` of term ``name`` in place, wherever the section's shape keeps it."""
    if not is_weighted(section):
        section[key] = value
        return
    args = dict(section.get("args") or {})
    args[name] = {**(args.get(name) or {}), key: value}
    section["args"] = args


def reward_problems(reward: dict[str, Any]) -> list[str]:
    """What is wrong with a reward section's shape (names and arguments are the registry's business)."""
    if not is_weighted(reward):
        if not isinstance(reward.get("name"), str):
            return ["config section 'reward' needs a 'name' (a registered reward) or 'weights' ({name: weight})."]
        return []
    weights = reward["weights"]
    if not isinstance(weights, dict) or not weights:
        return [f"config key 'reward.weights' must map reward names to numbers, got {weights!r}."]
    problems = []
    extra = sorted(set(reward) - {"weights", "args"})
    if extra:
        problems.append(
            f"config section 'reward' has 'weights' and also {extra}; with weights, give each reward's "
            f"arguments under reward.args.<name> (e.g. reward.args.jpeg-compressibility.quality=30)."
        )
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            problems.append(f"config key 'reward.weights.{name}' must be a finite number, got {w!r}.")
    args = reward.get("args") or {}
    if not isinstance(args, dict) or not all(isinstance(v, dict) or v is None for v in args.values()):
        problems.append(
            f"config key 'reward.args' must map reward names to their arguments "
            f"(e.g. {{jpeg-compressibility: {{quality: 30}}}}), got {args!r}."
        )
    return problems


def unknown_term_arguments(section: dict[str, Any]) -> str:
    """The problem of ``reward.args`` naming a reward that is not a term ("" when there is none)."""
    if not is_weighted(section):
        return ""
    unknown = sorted(set(section.get("args") or {}) - set(section["weights"]))
    return (
        f"reward.args names {unknown}, which are not in reward.weights {sorted(section['weights'])}." if unknown else ""
    )
