"""Checking a config value against a type annotation: the config's own sections and plugin arguments.

The annotations understood are those a YAML value can meet: ``int``, ``float``, ``bool``, ``str``,
``None``, ``Any``, ``Literal[...]``, unions (``X | None``), ``list[X]``, ``tuple[X, ...]`` and
``dict``. ``checkable`` says whether an annotation is made only of those.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal

from draft_core.errors import ConfigError

_PLAIN = (int, float, bool, str, type(None), list, tuple, dict)


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return (
            f"a list of {type_name(args[0])}" if len(set(args)) == 1 else f"a list [{', '.join(map(type_name, args))}]"
        )
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def checkable(tp: Any) -> bool:
    """Whether ``tp`` is built only of annotations ``check_value`` understands."""
    if tp is Any or tp in _PLAIN:
        return True
    origin = typing.get_origin(tp)
    if origin is Literal:
        return True
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        return all(a is Ellipsis or checkable(a) for a in typing.get_args(tp))
    return False


def check_value(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints widen to floats, nothing else converts.

    Raises ConfigError naming the config key, the value and the type expected."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return check_value(value, arg, key)
            except ConfigError:
                pass
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is list:
        if isinstance(value, list):
            item = (typing.get_args(tp) or (Any,))[0]
            return [check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is tuple:  # YAML has no tuples: a list of the right items
        args = typing.get_args(tp) or (Any, Ellipsis)
        if isinstance(value, (list, tuple)):
            items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
            if len(items) == len(value):
                return [check_value(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, items))]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is type(None):
        if value is None:
            return None
    elif tp is tuple:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    finite = " (a finite number)" if tp is float else ""
    raise ConfigError(f"config key '{key}' has the value {value!r}, but it must be {type_name(tp)}{finite}.")
