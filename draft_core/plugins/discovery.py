"""Plugin discovery: the modules named by entry points in group ``draft`` (the pluggy project name too).

Built-ins from the distribution ``draft-diffusion`` go through the same path as any outside
plugin, built-ins first. One plugin that fails to import is recorded as a ``LoadError`` and the
rest still load; a name registered twice is a ``Conflict``: the built-in (or the first loaded) keeps
it, the later registration is dropped, and only a run that names it gets an error. Both are listed
by ``draft plugins`` and reported elsewhere in one warning line. ``DRAFT_STRICT_PLUGINS=1``
re-raises both instead. ``DRAFT_PLUGINS=a,b`` limits third-party plugins to the entry points it
names (an empty value loads no third-party plugin at all); a name that matches none is warned about.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Iterable, Iterator

from draft_core.plugins.registry import (
    BUILTIN_DISTRIBUTION,
    GROUP,
    LoadError,
    Registry,
    _error_text,
    normalise_distribution,
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
    # Built-ins first, so that they keep their names when an outside plugin registers one again.
    found = sorted(_entry_points(), key=lambda item: normalise_distribution(item[1]) != builtin)
    outside = {ep.name for ep, dist_name, _ in found if normalise_distribution(dist_name) != builtin}
    registry.unknown_allowed = tuple(n for n in allow_list or () if n not in outside)
    for ep, dist_name, version in found:
        if allow_list is not None and normalise_distribution(dist_name) != builtin and ep.name not in allow_list:
            continue
        try:
            staged = registry._attach(ep.load(), ep.name, dist_name, version)
        except Exception as exc:
            if strict:
                raise
            registry.load_errors.append(LoadError(ep.name, dist_name, version, _error_text(exc)))
            continue
        # A name provided twice is not one plugin's fault, so it is not a load error either: the
        # first keeps it for listing, and naming it is an error (picking one could run the wrong code).
        registry._commit(staged, strict=strict)
    return registry


def warnings_text(registry: Registry) -> list[str]:
    """One line for the name conflicts and one for unknown DRAFT_PLUGINS names, if any."""
    lines = []
    if registry.conflicts:
        names = ", ".join(f"{c.kept.kind} '{c.kept.name}'" for c in registry.conflicts)
        lines.append(
            f"[draft] warning: {len(registry.conflicts)} plugin name(s) registered twice ({names}); the later "
            "registration was dropped and naming it in a run is an error. `draft plugins` lists both providers."
        )
    for claim in registry.claim_conflicts:
        lines.append(f"[draft] warning: {claim.message()} `draft plugins` lists both.")
    if registry.unknown_allowed:
        lines.append(
            f"[draft] warning: DRAFT_PLUGINS names {', '.join(map(repr, registry.unknown_allowed))}, which no "
            "installed distribution provides as an entry point in group 'draft'; `draft plugins` lists what is installed."
        )
    return lines


_cache: tuple[tuple[bool, tuple[str, ...] | None], Registry] | None = None


def load_registry(*, strict: bool | None = None, refresh: bool = False, report: bool = True) -> Registry:
    """The registry of every installed plugin, built once per process.

    strict: re-raise the first plugin error (default: ``DRAFT_STRICT_PLUGINS``).
    refresh: rebuild even if cached. The cache is also rebuilt when the strictness
    or ``DRAFT_PLUGINS`` changed since it was built.
    report: when it is built, print ``warnings_text`` to stderr (``draft plugins`` lists them instead).
    """
    global _cache
    key = (_strict_from_env() if strict is None else strict, _allow_list_from_env())
    if _cache is not None and not refresh and _cache[0] == key:
        return _cache[1]
    registry = _discover(*key)
    _cache = (key, registry)
    if report:
        for line in warnings_text(registry):
            print(line, file=sys.stderr)
    return registry
