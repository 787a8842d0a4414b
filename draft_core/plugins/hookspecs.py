"""The plugin contract: four hooks, each handed a ``register(name, factory)`` callback.

A plugin module (named by an entry point in group ``draft``) implements any of
these with ``@draft_core.hookimpl``. ``factory(**kwargs)`` builds the object from
the keyword arguments a config gives; heavy weights load on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "draft"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def register_samplers(register: Register) -> None:
    """Register samplers: ``register("ddim", DDIMSampler)``."""


@hookspec
def register_estimators(register: Register) -> None:
    """Register gradient estimators: ``register("draft-k", TruncatedBackprop)``."""


@hookspec
def register_rewards(register: Register) -> None:
    """Register rewards: ``register("jpeg-compressibility", JpegCompressibility)``."""


@hookspec
def register_models(register: Register) -> None:
    """Register model families: ``register("sdxl", SDXLModel)``. The factory is a
    ``draft_core.models.family.ModelFamily`` subclass: its ``pipeline_classes`` say which diffusers
    folders it loads, ``from_pretrained(source, dtype, **kw)`` loads one."""
