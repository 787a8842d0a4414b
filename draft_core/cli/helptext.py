"""What ``draft COMMAND --help`` shows beyond argparse's own: every option's default, and the names of the
built-in presets. Imports nothing heavy, so help answers at once."""

from __future__ import annotations

import argparse
from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent.parent / "config" / "presets"


def preset_names() -> list[str]:
    """The built-in presets (``draft train --preset NAME``), from the preset files themselves."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


class DefaultsFormatter(argparse.HelpFormatter):
    """argparse's formatter, with ``(default: X)`` after each option whose default says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or not says_something(action):
            return text
        return f"{text} (default: %(default)s)"


def says_something(action: argparse.Action) -> bool:
    """Whether an option's default is worth showing: not for positionals, switches (False),
    repeatable options (an empty list) or options that default to None (their help says what
    happens instead)."""
    default = action.default
    return bool(action.option_strings) and not (
        default is argparse.SUPPRESS or default is None or isinstance(default, bool) or default == []
    )


def with_defaults_shown(parser: argparse.ArgumentParser) -> None:
    """Use DefaultsFormatter in ``parser`` and every subcommand's parser below it; an option with a
    default but no help text gets one that shows the default."""
    parser.formatter_class = DefaultsFormatter
    for action in parser._actions:
        if action.help is None and says_something(action):
            action.help = "default: %(default)s"
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                with_defaults_shown(child)
