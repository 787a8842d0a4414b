"""The command line's ``--set dotted.key=value`` overrides, and the deep merge of a preset or YAML
file over the defaults (a plugin section replaced whole when its name changes)."""

from __future__ import annotations

from typing import Any

import yaml

from draft_core.config.yaml_files import yaml_load
from draft_core.errors import ConfigError

#: the config sections that name a plugin (``name`` plus the plugin's own arguments)
PLUGIN_SECTIONS = {"sampler": "sampler", "estimator": "estimator", "reward": "reward"}


def merge(base: dict, update: dict) -> dict:
    """``update`` over ``base``, section by section; a plugin section whose name is given is replaced whole."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("sampler", "estimator", "reward"):
            out[k] = merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict) and "name" not in v and "weights" not in v:
            out[k] = merge(out[k], v)  # partial plugin section: keep the name, change arguments
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value); the value is read as YAML (50, true, [1, 2])."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}' is not of the form dotted.key=value (e.g. --set train.steps=50).")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set '{text}': '{key}' is not a dotted key such as train.steps.")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(raw: dict, overrides: list[str], renamed: dict[str, set[str]] | None = None) -> dict:
    """Apply ``--set`` overrides. Changing a plugin's name (``--set estimator.name=draft-k``) keeps the
    old plugin's arguments; ``renamed`` (section -> those carried keys) lets the resolver drop the ones
    the new plugin does not accept. Without ``renamed`` they are dropped here."""
    raw = dict(raw)
    parsed = [parse_override(text) for text in overrides]
    renames = [(p, v) for p, v in parsed if len(p) == 2 and p[0] in PLUGIN_SECTIONS and p[1] == "name"]
    for parts, value in renames:
        old = raw.get(parts[0])
        old_name = old.get("name") if isinstance(old, dict) else old
        if old_name != value:
            carried = (
                {k: v for k, v in old.items() if k != "name"} if isinstance(old, dict) and renamed is not None else {}
            )
            raw[parts[0]] = {"name": value, **carried}
            if carried:
                given = {p[1] for p, _ in parsed if len(p) >= 2 and p[0] == parts[0]}
                renamed[parts[0]] = set(carried) - given
    for parts, value in parsed:
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if isinstance(child, str) and part in PLUGIN_SECTIONS:
                child = {"name": child}
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return raw
