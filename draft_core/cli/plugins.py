"""``draft plugins``: the registered samplers, estimators and rewards, who provides each, and load errors."""

from __future__ import annotations

import argparse
import json


def cmd_plugins(args: argparse.Namespace) -> int:
    from draft_core.plugins import format_plugins, load_registry

    registry = load_registry(report=False)  # its conflicts and allow-list notes are part of the listing
    if args.json:
        print(json.dumps(registry.describe(), indent=2))
    else:
        print(format_plugins(registry))
    return 0


def add_parser(sub) -> None:
    pl = sub.add_parser("plugins", help="list registered samplers, estimators and rewards, and plugin load errors")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.set_defaults(func=cmd_plugins)
