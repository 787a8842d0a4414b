"""User-facing errors: each carries one paragraph that names the bad value and what is accepted.

The CLI prints ``DraftError`` messages without a traceback and exits non-zero;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DraftError(Exception):
    """An error caused by input (config, names, files) that the user can fix."""


class ConfigError(DraftError):
    """A config key, type or value is wrong."""


class PluginError(DraftError):
    """A plugin name is unknown, duplicated, or its arguments are wrong."""


class ModelLoadError(DraftError):
    """A model could not be found or loaded."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean X?' suffix, or an empty string."""
    match = closest(name, choices)
    return f" Did you mean '{match}'?" if match else ""


def join_problems(problems: list[str]) -> str:
    """One problem as it is; several as a numbered list under one line, so all are fixed in one go."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems:\n" + "\n".join(f"  {i}. {p}" for i, p in enumerate(problems, 1))
