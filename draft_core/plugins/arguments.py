"""A plugin factory's arguments, read from its signature: names, defaults and annotations.

Used to list each plugin's arguments (``draft plugins``, ``draft train --dry-run``) and to check
the values a config gives against the factory's annotations before anything is built.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Argument:
    """One keyword argument of a factory; ``default`` is ``REQUIRED`` when it has none."""

    name: str
    default: Any
    annotation: Any  # the resolved annotation, or None when there is none (or it cannot be resolved)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def text(self) -> str:
        """``name=default`` or ``name (required)``."""
        return f"{self.name} (required)" if self.required else f"{self.name}={self.default!r}"

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable: name, required, default (its repr when JSON has no such value), type."""
        default = None if self.required else self.default
        if not (default is None or isinstance(default, (bool, int, float, str))):
            default = repr(default)
        return {
            "name": self.name,
            "required": self.required,
            "default": default,
            "type": _annotation_text(self.annotation),
        }


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if isinstance(factory, type) else factory  # type: ignore[misc]  # a class's own __init__
    try:
        return typing.get_type_hints(target)
    except Exception:  # an annotation naming something unimportable: check without types
        return {}


@dataclass(frozen=True)
class FactorySignature:
    """What a factory's signature says about calling it with keywords (the one place it is read)."""

    keyword: list[Argument]  # the arguments a keyword can give, in order
    any_keyword: bool  # it takes ``**kwargs``
    positional_only: list[str]  # required arguments no keyword can give

    def names(self) -> list[str]:
        return [a.name for a in self.keyword]


def signature_of(factory: Callable[..., Any], annotations: bool = True) -> FactorySignature | None:
    """The factory's signature (``annotations``: with its resolved type hints); None without one."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # some C callables have no signature
        return None
    hints = _hints(factory) if annotations else {}
    return FactorySignature(
        keyword=[
            Argument(p.name, p.default, hints.get(p.name))
            for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ],
        any_keyword=any(p.kind is p.VAR_KEYWORD for p in params),
        positional_only=[p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty],
    )


def arguments(factory: Callable[..., Any]) -> tuple[list[Argument], bool] | None:
    """The factory's keyword arguments in order and whether it takes ``**kwargs``; None without a signature."""
    sig = signature_of(factory)
    return None if sig is None else (sig.keyword, sig.any_keyword)


def argument_list(factory: Callable[..., Any], skip: tuple[str, ...] = ()) -> list[Argument]:
    found = arguments(factory)
    return [a for a in (found[0] if found else []) if a.name not in skip]


def defaults_left(factory: Callable[..., Any], given: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The arguments ``given`` leaves at their defaults: name -> default."""
    return {a.name: a.default for a in argument_list(factory, skip) if not a.required and a.name not in given}


def type_problems(factory: Callable[..., Any], kwargs: dict[str, Any], key: str) -> list[str]:
    """A sentence for each value in ``kwargs`` that does not fit the factory's annotation of it
    (only annotations a YAML value can meet are checked: int, float, bool, str, Optional, Literal,
    lists and tuples of those); ``key`` is the config section, e.g. ``reward``."""
    from draft_core.config.values import check_value, checkable
    from draft_core.errors import ConfigError

    by_name = {a.name: a for a in argument_list(factory)}
    problems = []
    for name, value in kwargs.items():
        arg = by_name.get(name)
        if arg is None or arg.annotation is None or not checkable(arg.annotation):
            continue
        annotation = arg.annotation
        if arg.default is None:  # `x: float = None`: None is meant to be accepted
            annotation = typing.Optional[annotation]  # noqa: UP045 (any annotation object, not only types, takes Optional)
        try:
            check_value(value, annotation, f"{key}.{name}")
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def _annotation_text(annotation: Any) -> str | None:
    if annotation is None:
        return None
    return inspect.formatannotation(annotation).replace("typing.", "")
