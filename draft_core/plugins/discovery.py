"""Plugin discovery: the modules named by entry points in group ``draft`` (the pluggy project name too).

Built-ins from the distribution ``draft-diffusion`` go through the same path as any outside
plugin. One plugin that fails to import is recorded as a ``LoadError`` and the rest still load;
``DRAFT_STRICT_PLUGINS=1`` re-raises instead. ``DRAFT_PLUGINS=a,b`` limits third-party plugins
to the entry points it names (an empty value loads no third-party plugin at all).
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Iterable, Iterator

from draft_core.plugins.registry import (
    BUILTIN_DISTRIBUTION, GROUP, LoadError, Registry, _error_text, normalise_distribution,
)


def _strict_from_env() -> bool:
    return os.environ.get("DRAFT_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes", "on")


def _allow_list_from_env() -> tuple[str, ...] | None:
    value = os.environ.get("DRAFT_PLUGINS")
    if value is None:
        return None
    return tuple(n.strip() for n in value.split(",") if n.strip())


def _entry_points() -> Iterator[tuple[importlib.metadata.EntryPoint, str, str | None]]:
    """(entry point, distribution name, version) for group ``draft``, one distribution once.

    The same distribution can appear twice on sys.path (an editable install and
    its egg-info in the working directory); the first one, as imports see it, wins.
    """
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        try:
            dist_name = dist.metadata["name"]
        except KeyError:
            dist_name = None
        if not dist_name:
            continue  # broken metadata: nothing to attribute entry points to
        key = normalise_distribution(dist_name)
        if key in seen:
            continue
        seen.add(key)
        eps: Iterable[importlib.metadata.EntryPoint] = dist.entry_points
        for ep in eps:
            if ep.group == GROUP:
                yield ep, dist_name, dist.version


def _discover(strict: bool, allow_list: tuple[str, ...] | None) -> Registry:
    registry = Registry()
    registry.allow_list = allow_list
    builtin = normalise_distribution(BUILTIN_DISTRIBUTION)
    for ep, dist_name, version in _entry_points():
        if (
            allow_list is not None
            and normalise_distribution(dist_name) != builtin
            and ep.name not in allow_list
        ):
            continue
        try:
            staged = registry._attach(ep.load(), ep.name, dist_name, version)
        except Exception as exc:
            if strict:
                raise
            registry.load_errors.append(LoadError(ep.name, dist_name, version, _error_text(exc)))
            continue
        # A name provided twice is not one plugin's fault, so it is never
        # downgraded to a load error: silently picking one would run the wrong code.
        registry._commit(staged)
    return registry


_cache: tuple[tuple[bool, tuple[str, ...] | None], Registry] | None = None


def load_registry(*, strict: bool | None = None, refresh: bool = False) -> Registry:
    """The registry of every installed plugin, built once per process.

    strict: re-raise the first plugin error (default: ``DRAFT_STRICT_PLUGINS``).
    refresh: rebuild even if cached. The cache is also rebuilt when the strictness
    or ``DRAFT_PLUGINS`` changed since it was built.
    """
    global _cache
    key = (_strict_from_env() if strict is None else strict, _allow_list_from_env())
    if _cache is not None and not refresh and _cache[0] == key:
        return _cache[1]
    registry = _discover(*key)
    _cache = (key, registry)
    return registry
