"""``draft config``: every config key with its type, default and help (``--markdown``: the docs page)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_config(args: argparse.Namespace) -> int:
    from draft_core.config import reference

    if args.markdown is None:
        print(reference.text(), end="")
        return 0
    page = reference.markdown()
    if args.markdown == "-":
        print(page, end="")
        return 0
    Path(args.markdown).write_text(page, encoding="utf-8")
    print(f"wrote {args.markdown}")
    return 0


def add_parser(sub) -> None:
    cp = sub.add_parser("config", help="list every config key with its type, default and help")
    cp.add_argument(
        "--markdown",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write the reference as markdown to FILE (default: stdout; the repository's page is docs/config.md)",
    )
    cp.set_defaults(func=cmd_config)
