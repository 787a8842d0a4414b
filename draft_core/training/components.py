"""What a config names, built through the plugin registry: sampler, estimator (with any wrapper such as
``kl``), reward (or a weighted sum of rewards) and prompts. Loads no model weights.

Every name, argument and argument type is checked before anything is built, and every problem found
is reported at once. The reward the runner hands to estimators is ``Components.checked_reward()``:
the configured reward behind the core's contract checks (``draft_core.rewarding.contract``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from draft_core.config import Config, plugin_kwargs, resolve_config
from draft_core.config.prompts import load_prompts
from draft_core.config.resolve import is_wrapper, split_estimator
from draft_core.errors import ConfigError, DraftError, PluginError, join_problems
from draft_core.plugins import Registry, load_registry
from draft_core.plugins.arguments import defaults_left, type_problems
from draft_core.plugins.bases import EstimatorBase, SamplerBase, as_estimator, as_sampler
from draft_core.plugins.protocols import Reward
from draft_core.rewarding.contract import CheckedReward, checked_reward
from draft_core.rewarding.gradient import check_reward_gradient
from draft_core.rewarding.spec import is_weighted, reward_terms, unknown_term_arguments
from draft_core.rewarding.weighted import WeightedReward
from draft_core.training.faults import Source
from draft_core.training.learned_sampling import guidance_learning_warning
from draft_core.training.provenance import python_source
from draft_core.training.tracking import check_trackers
from draft_core.training.validation import Validation, build_validation


@dataclass
class Components:
    """What a run trains with. ``sampler`` and ``estimator`` have every optional member of their kind
    (``draft_core.plugins.bases``: a plugin without some is adapted when the components are made)."""

    sampler: SamplerBase
    estimator: EstimatorBase
    reward: Reward
    prompts: list[str]
    sources: list[tuple[Reward, Source]] = field(default_factory=list)  # (reward term, who provides it)
    estimator_source: Source | None = None
    validation: Validation | None = None  # when train.validation is set
    warnings: list[str] = field(default_factory=list)  # settings that work, but not as one may expect

    def __post_init__(self) -> None:
        self.sampler, self.estimator = as_sampler(self.sampler), as_estimator(self.estimator)

    def checked_reward(self) -> CheckedReward:
        """``reward`` behind the core's checks: images before it runs, [B] after; each term of a
        weighted sum is checked too, so a message names the term's own plugin."""
        labels = {id(term): src.describe() for term, src in self.sources}
        reward = self.reward
        if isinstance(reward, WeightedReward) and type(reward) is WeightedReward:
            terms = reward.terms
            reward = WeightedReward(
                {
                    name: (checked_reward(term, labels.get(id(term), f"reward '{name}'"), check_images=False), w)
                    for name, (term, w) in terms.items()
                }
            )
            label = "the weighted sum of rewards " + ", ".join(
                labels.get(id(t), repr(n)) for n, (t, _) in terms.items()
            )
        else:
            label = labels.get(id(reward), f"reward {type(reward).__name__} (given from Python)")
        return checked_reward(reward, label)


@dataclass(frozen=True)
class Planned:
    """One plugin a config builds: ``kind`` ``name`` with ``kwargs``, from the config section ``key``."""

    kind: str
    name: str
    kwargs: dict[str, Any]
    key: str


def section_label(section: dict[str, Any]) -> str:
    """``draft-lv(n=2, kl=0.1)``: a plugin section's registered name and the arguments it gives, less
    those left at None (a resolved section lists every argument; None is "not used" for all of them)
    (a reward section's label, with each term's weight, is ``draft_core.rewarding.spec.reward_label``)."""
    name, kwargs = plugin_kwargs(section)
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items() if v is not None)})"


def build_reward(section: dict[str, Any], registry: Registry) -> Reward:
    """The section's reward: a single term is the registered reward itself; several are their
    ``WeightedReward`` (each term built with its own arguments, as ``reward_terms`` reads them)."""
    unknown = unknown_term_arguments(section)
    if unknown:
        raise ConfigError(unknown)
    terms = reward_terms(section)
    built = {t.name: (_construct(registry, "reward", t.name, t.kwargs, t.key), t.weight) for t in terms}
    if not is_weighted(section):
        single: Reward = built[terms[0].name][0]
        return single
    return WeightedReward(built)  # the terms' objects were built by their registered factories


def build_components(config: Config, registry: Registry | None = None, *, reward: Any = None) -> Components:
    """Resolve every name and argument of the config; loads no model weights. All problems with
    names, arguments and argument types are raised together, before anything is built.

    reward: a reward object to train on instead of the config's reward section (which is then
    not built); the run records the object's class in config.yaml and the model card.
    """
    registry = registry or load_registry()
    given = reward is not None
    resolve_config(config, registry)  # in place: the family's sampler, every plugin argument written down
    check_plugins(config, registry, include_reward=not given)
    sampler = as_sampler(_build_plugin(registry, "sampler", config.sampler))
    estimator = as_estimator(build_estimator(config.estimator, registry))
    reward = reward if given else build_reward(config.reward, registry)
    estimator.check(sampler)
    prompts = load_prompts(config.prompts.source, config.prompts.items, config.prompts.template)
    e = registry.get("estimator", config.estimator["name"])
    estimator_source = Source(e.name, e.plugin, e.distribution, e.version, "estimator")
    check_trackers(config.train.trackers)
    validation = build_validation(config, registry, reward, build_reward)
    warnings = []
    if config.learn.guidance:
        note = guidance_learning_warning(estimator, sampler, config.estimator["name"])
        warnings += [note] if note else []
    if given:
        check_reward_gradient(estimator, config.estimator["name"], {python_source(reward).name: reward}, registry)
        return Components(
            sampler,
            estimator,
            reward,
            prompts,
            [(reward, python_source(reward))],
            estimator_source,
            validation,
            warnings,
        )
    terms = (
        {n: r for n, (r, _) in reward.terms.items()}
        if isinstance(reward, WeightedReward)
        else {reward_terms(config.reward)[0].name: reward}
    )
    check_reward_gradient(estimator, config.estimator["name"], terms, registry)
    sources = []
    for name, term in terms.items():
        r = registry.get("reward", name)
        sources.append((term, Source(name, r.plugin, r.distribution, r.version)))
    return Components(sampler, estimator, reward, prompts, sources, estimator_source, validation, warnings)


def plan(config: Config, registry: Registry, include_reward: bool = True) -> list[Planned]:
    """Every plugin the config builds, in order: sampler, estimator, its wrappers, reward(s).
    A wrapper's ``kwargs`` leave out ``inner`` (the estimator it wraps)."""
    planned = [Planned("sampler", *plugin_kwargs(config.sampler), "sampler")]
    name, kwargs, wrappers = split_estimator(config.estimator, registry)
    planned.append(Planned("estimator", name, kwargs, "estimator"))
    planned += [Planned("estimator", key, args, f"estimator.{key}") for key, args in wrappers]
    section = config.reward
    if not include_reward:
        return planned
    planned += [Planned("reward", t.name, t.kwargs, t.key) for t in reward_terms(section)]
    return planned


def check_plugins(config: Config, registry: Registry, include_reward: bool = True) -> None:
    """Raise one error listing every unknown plugin name, unknown or missing argument, and argument
    value that does not fit its factory's annotation (``--set reward.scale=abc`` on a float)."""
    problems: list[tuple[type, str]] = []
    if include_reward and (unknown := unknown_term_arguments(config.reward)):
        problems.append((ConfigError, unknown))
    for p in plan(config, registry, include_reward):
        try:
            entry = registry.get(p.kind, p.name)
            kwargs = {"inner": None, **p.kwargs} if is_wrapper(registry, p.name) and p.kind == "estimator" else p.kwargs
            registry.check_kwargs(p.kind, p.name, kwargs)
        except PluginError as exc:
            problems.append((type(exc), str(exc)))
            continue
        problems += [(ConfigError, text) for text in type_problems(entry.factory, p.kwargs, p.key)]
    if len(problems) == 1:
        raise problems[0][0](problems[0][1])
    if problems:
        raise ConfigError(join_problems([text for _, text in problems]))


def default_arguments(config: Config, registry: Registry | None = None) -> list[tuple[Planned, dict[str, Any]]]:
    """Each plugin the config builds with the arguments it leaves at their defaults (name -> default)."""
    registry = registry or load_registry()
    return [
        (p, defaults_left(registry.get(p.kind, p.name).factory, p.kwargs, skip=("inner",)))
        for p in plan(config, registry)
    ]


def build_estimator(section: dict[str, Any], registry: Registry) -> Any:
    """The named estimator, wrapped by each estimator wrapper its section names as a key.

    A wrapper is a registered estimator whose factory has ``wraps_estimator = True`` and takes
    the estimator it wraps as ``inner`` (the built-in ``kl``). ``{name: draft-lv, kl: 0.1}``
    builds ``kl(inner=draft-lv, beta=0.1)``; a mapping value gives the wrapper's keyword arguments.
    A key the estimator itself accepts stays the estimator's argument.
    """
    name, kwargs, wrappers = split_estimator(section, registry)
    estimator = _construct(registry, "estimator", name, kwargs, "estimator")
    for key, args in wrappers:
        estimator = _construct(registry, "estimator", key, {"inner": estimator, **args}, f"estimator.{key}")
    return estimator


def _build_plugin(registry: Registry, kind: str, section: dict[str, Any]) -> Any:
    name, kwargs = plugin_kwargs(section)
    return _construct(registry, kind, name, kwargs, kind)


def _construct(registry: Registry, kind: str, name: str, kwargs: dict[str, Any], key: str) -> Any:
    try:
        return registry.build(kind, name, **kwargs)
    except DraftError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        # A factory rejecting a value is an input error: say which plugin and which arguments.
        raise ConfigError(f"{kind} '{name}' rejected its arguments {kwargs} (config section '{key}'): {exc}") from exc
