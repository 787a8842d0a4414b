"""A config key's help text and range check, kept beside its field in ``schema`` (dataclass metadata).

``key(default, help, check=...)`` declares a field; ``field_problems`` runs every field's check over a
config (``schema.value_problems`` adds the checks that span several keys); ``reference_rows`` lists
every key with its type, default and help, for ``draft config`` and docs/config.md. A check takes the
dotted key and the value and returns one sentence naming both and what is accepted, or None.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

Check = Callable[[str, Any], "str | None"]
HELP, CHECK = "help", "check"


def key(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    check: Check | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A config field with its help and optional check (``factory``: a default made fresh per config)."""
    metadata = {HELP: help, CHECK: check}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# -- checks -------------------------------------------------------------------------------


def positive(k: str, v: Any) -> str | None:
    return f"config key '{k}' must be a positive integer, got {v}." if v < 1 else None


def above(limit: float, note: str = "", *, null: bool = False) -> Check:
    """> limit (null accepted when ``null``); ``note`` follows the bound in the message."""

    def check(k: str, v: Any) -> str | None:
        return None if (null and v is None) or v > limit else f"config key '{k}' must be > {limit}{note}, got {v}."

    return check


def at_least(limit: float, note: str = "") -> Check:
    def check(k: str, v: Any) -> str | None:
        return None if v >= limit else f"config key '{k}' must be >= {limit}{note}, got {v}."

    return check


def all_of(*checks: Check) -> Check:
    """Each check's problem (the first that finds one is reported)."""

    def check(k: str, v: Any) -> str | None:
        return next((p for c in checks if (p := c(k, v)) is not None), None)

    return check


# -- walking the sections ---------------------------------------------------------------------


def _fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field[Any], Any, bool]]:
    """(dotted key, field, its annotation, whether it is a section) in declaration order, sections expanded."""
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, dataclasses.Field[Any], Any, bool]] = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        section = dataclasses.is_dataclass(hints[f.name])
        out.append((name, f, hints[f.name], section))
        if section:
            out += _fields(hints[f.name], f"{name}.")
    return out


def field_problems(config: Any) -> list[str]:
    """Every field's check over ``config``, in declaration order."""
    problems = []
    for name, f, _, section in _fields(type(config)):
        check = f.metadata.get(CHECK)
        if check is None or section:
            continue
        value: Any = config
        for part in name.split("."):
            value = getattr(value, part)
        if (problem := check(name, value)) is not None:
            problems.append(problem)
    return problems


def reference_rows(cls: type) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) of every key of the config class ``cls``; a section's row has its docstring."""
    from draft_core.config.values import type_name

    rows = []
    for name, f, tp, section in _fields(cls):
        if section:
            doc = (tp.__doc__ or "").strip() if tp.__doc__ and not tp.__doc__.startswith(tp.__name__ + "(") else ""
            rows.append((name, "section", "", f.metadata.get(HELP) or " ".join(doc.split())))
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((name, type_name(tp), _show(default), f.metadata.get(HELP, "")))
    return rows


def _show(value: Any) -> str:
    import json

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value)
