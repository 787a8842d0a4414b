"""Resolving a config: the one place that decides what a config leaves out, so that it is written down.

``resolve_config`` turns a parsed config (a YAML file with ``--set`` overrides, or ``Config`` objects
built in Python) into the config a run uses and writes to ``config.yaml``:

- the sampler: the model family's default (euler for flow-matching families) unless one is named,
  with the model's sampling steps and guidance unless given (FLUX.1-dev: 28 steps, distilled
  guidance 3.5; ``digits-flow``: 20 steps, guidance 4; otherwise 50 steps, guidance 7.5), checked
  against the family (a diffusion sampler on a flow-matching model is refused, and the reverse);
- every plugin argument the config leaves out, filled with its factory's default (sampler,
  estimator and its wrappers, reward or each weighted term), where YAML can hold the value.

``load_config``, ``build_components``, the ``draft`` commands and ``draft_core.api`` all go through
it, so a config means the same thing from the command line and from Python. Resolving a resolved
config changes nothing. A model that cannot be looked up here (not cached, a typo) gets the generic
defaults; the run's preflight check then reports the model itself.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from draft_core.config.schema import Config, ModelSection, parse_config
from draft_core.errors import ConfigError, DraftError

#: The sampling defaults of a model whose family cannot be looked up here (ModelFamily's own).
GENERIC_SAMPLING: dict[str, Any] = {"name": "ddim", "steps": 50, "guidance_scale": 7.5}
SAMPLING_KEYS = ("steps", "guidance_scale")


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    preset: str | None = None,
    *,
    notes: list[str] | None = None,
) -> Config:
    """Defaults <- preset or YAML file <- ``--set`` overrides, checked, then resolved (``resolve_config``).

    Renaming a plugin with ``--set`` (``sampler.name=ddpm``) keeps the old section's arguments the new
    plugin accepts and warns naming those it drops: appended to ``notes`` when given (the CLI prints
    them once the config has passed its checks), printed to stderr otherwise."""
    renamed: dict[str, set[str]] = {}
    config = parse_config(path, list(overrides), preset=preset, renamed=renamed)
    found: list[str] = []
    resolve_config(config, renamed=renamed, notes=found)
    if notes is not None:
        notes += found
    for note in found if notes is None else ():
        print(f"[draft] warning: {note}", file=sys.stderr)
    return config


def resolve_config(
    config: Config,
    registry: Any = None,
    *,
    renamed: Mapping[str, set[str]] | None = None,
    notes: list[str] | None = None,
) -> Config:
    """Fill ``config`` in place (and return it): the sampler from the model, then every plugin argument
    left out. renamed: section -> the keys ``--set SECTION.name=...`` carried over from the old plugin
    (those the new one does not accept are dropped, each named in ``notes``)."""
    from draft_core.plugins import load_registry

    registry = registry or load_registry()
    for section, carried in (renamed or {}).items():
        setattr(config, section, _drop_unaccepted(section, getattr(config, section), carried, registry, notes))
    config.sampler = sampler_section(config.model, config.sampler, registry)
    config.estimator = _fill_estimator(config.estimator, registry)
    config.reward = _fill_reward(config.reward, registry)
    return config


# -- the sampler --------------------------------------------------------------------------


def model_family(model: ModelSection | str) -> Any:
    """The family class of ``model`` (read from model_index.json, no weights), or None when it
    cannot be looked up here."""
    from draft_core.models.loading import check_model

    section = ModelSection(name=model) if isinstance(model, str) else model
    try:
        return check_model(section.name, section.revision, section.family)
    except DraftError:
        return None


def sampling_defaults(model: ModelSection | str, family: Any = None) -> dict[str, Any]:
    """{name, steps, guidance_scale}: the sampler the model is sampled with when none is given.
    The family declares its default (``ModelFamily.sampling_defaults``); an embedded model may
    declare its own steps and guidance (``digits-flow``: 20 and 4)."""
    from draft_core.models.loading import EMBEDDED_SAMPLING

    section = ModelSection(name=model) if isinstance(model, str) else model
    family = family if family is not None else model_family(section)
    if family is None:
        return dict(GENERIC_SAMPLING)
    declared = getattr(family, "sampling_defaults", None)  # a plugin family need not build on ModelFamily
    found = (
        dict(declared(section.name, section.revision))
        if callable(declared)
        else {"name": getattr(family, "default_sampler", GENERIC_SAMPLING["name"])}
    )
    return {**GENERIC_SAMPLING, **found, **EMBEDDED_SAMPLING.get(section.name, {})}


def sampler_section(
    model: ModelSection | str,
    given: Mapping[str, Any] | None = None,
    registry: Any = None,
    inherit: Mapping[str, Any] | None = None,
    family: Any = None,
) -> dict[str, Any]:
    """The resolved sampler section for sampling ``model``: the keys ``given``, then steps and guidance
    from ``inherit`` (the sampler section of the run that trained a LoRA), then the model's defaults,
    then the sampler factory's defaults. family: the model's family class (default: looked up from
    ``model``). Raises ConfigError for a sampler of the wrong kind."""
    from draft_core.plugins import load_registry

    registry = registry or load_registry()
    section = ModelSection(name=model) if isinstance(model, str) else model
    family = family if family is not None else model_family(section)
    defaults = sampling_defaults(section, family)
    out = dict(given or {})
    if out.get("name") is None:
        out["name"] = defaults["name"]
    factory = _factory(registry, "sampler", out["name"])
    if factory is None:
        return out  # an unknown name: check_plugins reports it with the registered names
    accepted = accepted_arguments(factory)
    for key in SAMPLING_KEYS:
        if key not in out and (accepted is None or key in accepted):
            out[key] = (inherit or {}).get(key, defaults[key])
    check_sampler_family(family, out["name"], getattr(factory, "flow_matching", None), section.name)
    return fill_defaults(factory, out, skip=("name",))


def sampling_for(
    model: Any,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    loras: Sequence[Any] = (),
    registry: Any = None,
) -> dict[str, Any]:
    """The sampler section ``draft sample``, ``draft eval`` and ``api.sample`` sample with: the values
    given, else (with LoRAs) the steps and guidance of the run that trained the first LoRA with a
    run config.yaml, else the model's defaults. model: a name or a loaded model (its family is its class)."""
    from draft_core.lora.loading import run_config_of

    given = {k: v for k, v in (("name", sampler), ("steps", steps), ("guidance_scale", guidance)) if v is not None}
    inherit: dict[str, Any] = {}
    for spec in loras:
        run = run_config_of(Path(spec.path))
        if run is not None and isinstance(run.get("sampler"), dict):
            inherit = {k: run["sampler"][k] for k in SAMPLING_KEYS if k in run["sampler"]}
            break
    if isinstance(model, str):
        return sampler_section(model, given, registry, inherit)
    return sampler_section(getattr(model, "name", "") or "", given, registry, inherit, family=type(model))


def check_sampler_family(family: Any, sampler: str, flow_sampler: bool | None, model: str) -> None:
    """A flow-matching sampler for a flow-matching family, a diffusion sampler otherwise (ConfigError)."""
    flow_family = getattr(family, "flow_matching", None)
    if flow_family is None or flow_sampler is None or bool(flow_family) == bool(flow_sampler):
        return
    wanted = "a flow-matching sampler (euler, flow-sde, cps)" if flow_family else "a diffusion sampler (ddim, ddpm)"
    default = sampling_defaults(model, family)["name"]
    raise ConfigError(
        f"sampler '{sampler}' is a {'flow-matching' if flow_sampler else 'diffusion'} sampler, but model '{model}' "
        f"is of the '{getattr(family, 'family', '?')}' family, which "
        f"{'is trained with flow matching' if flow_family else 'predicts noise (or v) on a diffusion schedule'}: "
        f"use {wanted}, or leave the sampler out for the family's default ({default})."
    )


# -- plugin arguments -------------------------------------------------------------------------


def _factory(registry: Any, kind: str, name: Any) -> Callable[..., Any] | None:
    if not isinstance(name, str) or name not in registry.names(kind):
        return None
    return registry.get(kind, name).factory


def accepted_arguments(factory: Callable[..., Any]) -> list[str] | None:
    """The keyword names ``factory`` accepts, in order; None when it takes any keyword."""
    from draft_core.plugins.arguments import signature_of

    sig = signature_of(factory, annotations=False)
    return None if sig is None or sig.any_keyword else sig.names()


def _yaml_value(value: Any) -> tuple[bool, Any]:
    """(whether config.yaml can hold ``value``, the value as YAML holds it: tuples as lists)."""
    if value is None or isinstance(value, (bool, int, str)):
        return True, value
    if isinstance(value, float):
        return math.isfinite(value), value
    if isinstance(value, (list, tuple)):
        items = [_yaml_value(v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: _yaml_value(v) for k, v in value.items()}
        return all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()}
    return False, value


def fill_defaults(factory: Callable[..., Any], given: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``given`` plus each argument of ``factory`` it leaves out, at its default, in the factory's order
    (arguments whose defaults YAML cannot hold, such as objects, are left out)."""
    from draft_core.plugins.arguments import defaults_left

    out = dict(given)
    for name, default in defaults_left(factory, out, skip=("inner", *skip)).items():
        ok, value = _yaml_value(default)
        if ok:
            out[name] = value
    return out


def _drop_unaccepted(
    section: str, value: dict[str, Any], carried: set[str], registry: Any, notes: list[str] | None
) -> dict[str, Any]:
    """After ``--set SECTION.name=NEW``: the carried-over keys NEW does not accept, dropped and named."""
    name = value.get("name")
    factory = _factory(registry, section, name)
    if factory is None:
        return value  # an unknown name: check_plugins reports it
    accepted = accepted_arguments(factory)  # None: it takes any keyword
    reserved = {"weights", "args"} if section == "reward" else set()  # a weighted sum's keys, never one reward's
    dropped = sorted(
        k for k in carried if k in value and (k in reserved or (accepted is not None and k not in accepted))
    )
    if section == "estimator":  # an estimator wrapper (kl) wraps the new estimator as it did the old one
        dropped = [k for k in dropped if not is_wrapper(registry, k)]
    if dropped and notes is not None:
        kept = sorted(k for k in carried if k in value and k not in dropped)
        notes.append(
            f"--set {section}.name={name}: dropped {', '.join(f'{section}.{k}' for k in dropped)} of the previous "
            f"{section}, which '{name}' does not accept"
            + (f"; kept {', '.join(kept)}" if kept else "")
            + " (see `draft plugins` for its arguments)."
        )
    return {k: v for k, v in value.items() if k not in dropped}


def is_wrapper(registry: Any, name: str) -> bool:
    """Whether ``name`` is a registered estimator wrapper (its factory has ``wraps_estimator = True``)."""
    factory = _factory(registry, "estimator", name)
    return factory is not None and bool(getattr(factory, "wraps_estimator", False))


def split_estimator(
    section: Mapping[str, Any], registry: Any
) -> tuple[str, dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """(estimator name, its arguments, [(wrapper name, the wrapper's arguments), ...]).

    A key the estimator does not accept that names a registered wrapper (``kl: 0.1``) is a wrapper:
    a mapping value gives its arguments, a single value its first argument after ``inner``."""
    kwargs = {k: v for k, v in section.items() if k != "name"}
    name = section["name"]
    if is_wrapper(registry, name):
        raise ConfigError(
            f"estimator.name is '{name}', which wraps another estimator rather than being one: write it as a key "
            f"beside the estimator's name, e.g. estimator: {{name: draft-lv, {name}: 0.1}}."
        )
    factory = _factory(registry, "estimator", name)
    if factory is None:
        return name, kwargs, []  # reported by check_plugins with the registered names
    accepted = accepted_arguments(factory)
    wrappers = [k for k in kwargs if (accepted is not None and k not in accepted) and is_wrapper(registry, k)]
    split = []
    for key in wrappers:
        value = kwargs.pop(key)
        if isinstance(value, dict):
            args = dict(value)
        else:
            params = [p for p in (accepted_arguments(registry.get("estimator", key).factory) or []) if p != "inner"]
            if not params:
                raise ConfigError(
                    f"estimator.{key}: the wrapper '{key}' takes no value; give it a mapping of its arguments."
                )
            args = {params[0]: value}
        split.append((key, args))
    return name, kwargs, split


def _fill_estimator(section: dict[str, Any], registry: Any) -> dict[str, Any]:
    factory = _factory(registry, "estimator", section.get("name"))
    if factory is None or is_wrapper(registry, section["name"]):
        return section
    name, kwargs, wrappers = split_estimator(section, registry)
    out = {"name": name, **fill_defaults(factory, kwargs)}
    for key, args in wrappers:
        out[key] = fill_defaults(registry.get("estimator", key).factory, args)
    return out


def _fill_reward(section: dict[str, Any], registry: Any) -> dict[str, Any]:
    if "weights" not in section:
        factory = _factory(registry, "reward", section.get("name"))
        # Not "weights" or "args" (digit-classifier's weights file): those keys make a section a weighted sum.
        return section if factory is None else fill_defaults(factory, section, skip=("name", "weights", "args"))
    weights, args = section.get("weights"), section.get("args") or {}
    if not isinstance(weights, dict) or not isinstance(args, dict):
        return section  # reported by the config's checks
    filled = dict(args)
    for name in weights:
        factory = _factory(registry, "reward", name)
        given = args.get(name) or {}
        if factory is not None and isinstance(given, dict):
            filled[name] = fill_defaults(factory, given)
    return {**section, "args": filled}
