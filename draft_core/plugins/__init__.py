"""Plugins: the hook contract (``hookspecs``), the protocols plugins implement (``protocols``), the
registry of names (``registry``), entry-point discovery (``discovery``) and the ``draft plugins``
table (``listing``)."""

from draft_core.plugins.discovery import load_registry
from draft_core.plugins.listing import format_plugins
from draft_core.plugins.registry import (
    BUILTIN_DISTRIBUTION,
    KINDS,
    KNOWN_EXTERNAL,
    LoadError,
    PluginEntry,
    Registry,
    normalise_distribution,
)

__all__ = [
    "BUILTIN_DISTRIBUTION",
    "KINDS",
    "KNOWN_EXTERNAL",
    "LoadError",
    "PluginEntry",
    "Registry",
    "format_plugins",
    "load_registry",
    "normalise_distribution",
]
