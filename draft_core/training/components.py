"""What a config names, built through the plugin registry: sampler, estimator (with any wrapper such as
``kl``), reward (or a weighted sum of rewards) and prompts. Loads no model weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from draft_core.config import Config, plugin_kwargs
from draft_core.config.prompts import load_prompts
from draft_core.errors import ConfigError, DraftError
from draft_core.plugins import Registry, load_registry
from draft_core.rewarding.weighted import WeightedReward
from draft_core.training.faults import Source
from draft_core.training.tracking import check_trackers
from draft_core.training.validation import build_validation


@dataclass
class Components:
    sampler: Any
    estimator: Any
    reward: Any
    prompts: list[str]
    sources: list[tuple[Any, Source]] = field(default_factory=list)  # (reward term, who provides it)
    validation: Any = None  # draft_core.training.validation.Validation, when train.validation is set


def build_reward(section: dict, registry: Registry):
    if "weights" in section:
        args = section.get("args") or {}
        unknown = sorted(set(args) - set(section["weights"]))
        if unknown:
            raise ConfigError(f"reward.args names {unknown}, which are not in reward.weights {sorted(section['weights'])}.")
        terms = {
            name: (_construct(registry, "reward", name, args.get(name) or {}, f"reward.args.{name}"), float(w))
            for name, w in section["weights"].items()
        }
        return WeightedReward(terms)
    return _build_plugin(registry, "reward", section)


def build_components(config: Config, registry: Registry | None = None) -> Components:
    """Resolve every name and argument of the config; loads no model weights."""
    registry = registry or load_registry()
    sampler = _build_plugin(registry, "sampler", config.sampler)
    estimator = build_estimator(config.estimator, registry)
    reward = build_reward(config.reward, registry)
    if hasattr(estimator, "check"):
        estimator.check(sampler)
    prompts = load_prompts(config.prompts.source, config.prompts.items, config.prompts.template)
    terms = {n: r for n, (r, _) in reward.terms.items()} if isinstance(reward, WeightedReward) else {config.reward["name"]: reward}
    sources = []
    for name, term in terms.items():
        e = registry.get("reward", name)
        sources.append((term, Source(name, e.plugin, e.distribution, e.version)))
    check_trackers(config.train.trackers)
    validation = build_validation(config, registry, reward, build_reward)
    return Components(sampler, estimator, reward, prompts, sources, validation)


def build_estimator(section: dict, registry: Registry):
    """The named estimator, wrapped by each estimator wrapper its section names as a key.

    A wrapper is a registered estimator whose factory has ``wraps_estimator = True`` and takes
    the estimator it wraps as ``inner`` (the built-in ``kl``). ``{name: draft-lv, kl: 0.1}``
    builds ``kl(inner=draft-lv, beta=0.1)``; a mapping value gives the wrapper's keyword arguments.
    A key the estimator itself accepts stays the estimator's argument.
    """
    name, kwargs = plugin_kwargs(section)
    if _is_wrapper(registry, name):
        raise ConfigError(
            f"estimator.name is '{name}', which wraps another estimator rather than being one: write it as a key "
            f"beside the estimator's name, e.g. estimator: {{name: draft-lv, {name}: 0.1}}."
        )
    accepted = _accepted_arguments(registry.get("estimator", name).factory)
    wrappers = [k for k in kwargs if (accepted is not None and k not in accepted) and _is_wrapper(registry, k)]
    values = {k: kwargs.pop(k) for k in wrappers}
    estimator = _construct(registry, "estimator", name, kwargs, "estimator")
    for key, value in values.items():
        factory = registry.get("estimator", key).factory
        if isinstance(value, dict):
            args = dict(value)
        else:
            params = [p for p in (_accepted_arguments(factory) or []) if p != "inner"]
            if not params:
                raise ConfigError(f"estimator.{key}: the wrapper '{key}' takes no value; give it a mapping of its arguments.")
            args = {params[0]: value}
        estimator = _construct(registry, "estimator", key, {"inner": estimator, **args}, f"estimator.{key}")
    return estimator


def _is_wrapper(registry: Registry, name: str) -> bool:
    return name in registry.names("estimator") and bool(getattr(registry.get("estimator", name).factory, "wraps_estimator", False))


def _accepted_arguments(factory) -> list[str] | None:
    """The keyword names ``factory`` accepts, in order; None when it takes any keyword."""
    import inspect

    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _build_plugin(registry: Registry, kind: str, section: dict):
    name, kwargs = plugin_kwargs(section)
    return _construct(registry, kind, name, kwargs, kind)


def _construct(registry: Registry, kind: str, name: str, kwargs: dict, key: str):
    try:
        return registry.build(kind, name, **kwargs)
    except DraftError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        # A factory rejecting a value is an input error: say which plugin and which arguments.
        raise ConfigError(f"{kind} '{name}' rejected its arguments {kwargs} (config section '{key}'): {exc}") from exc
