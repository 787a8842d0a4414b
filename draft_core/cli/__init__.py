"""The ``draft`` command line: one module per command (``plugins``, ``train``, ``plan``, ``sample``,
``eval``, ``score``, ``lora``, ``report``, ``reward``, ``config``) and the helpers they share (``common``).

Input errors (config, names, paths) print one paragraph and exit 2, with no traceback;
an interrupted run exits 130 after checkpointing.
"""

from __future__ import annotations

import argparse
import sys

from draft_core.errors import DraftError


def build_parser() -> argparse.ArgumentParser:
    from draft_core import __version__
    from draft_core.cli import config as cli_config
    from draft_core.cli import eval as cli_eval
    from draft_core.cli import lora as cli_lora
    from draft_core.cli import plan as cli_plan
    from draft_core.cli import plugins as cli_plugins
    from draft_core.cli import report as cli_report
    from draft_core.cli import reward as cli_reward
    from draft_core.cli import sample as cli_sample
    from draft_core.cli import score as cli_score
    from draft_core.cli import train as cli_train
    from draft_core.cli.helptext import with_defaults_shown

    p = argparse.ArgumentParser(
        prog="draft", description="Fine-tune diffusion models on differentiable rewards (DRaFT)."
    )
    p.add_argument("--version", action="version", version=f"draft {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in (
        cli_plugins,
        cli_train,
        cli_plan,
        cli_sample,
        cli_eval,
        cli_lora,
        cli_score,
        cli_report,
        cli_reward,
        cli_config,
    ):
        command.add_parser(sub)
    with_defaults_shown(p)
    return p


#: arguments that make argparse print and exit before any command runs
HELP_OR_VERSION = {"-h", "--help", "--version"}


def main(argv: list[str] | None = None) -> int:
    # A help or version request runs nothing, so it skips the argument check and its imports (the
    # config package loads torch): `draft --version` and `draft --help` answer at once.
    if not HELP_OR_VERSION.intersection(sys.argv[1:] if argv is None else argv):
        from draft_core.config.inputs import check_argv_text

        try:
            check_argv_text(sys.argv[1:] if argv is None else argv)
        except DraftError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    args.argv = ["draft", *(sys.argv[1:] if argv is None else argv)]  # the command as given (model cards record it)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # `draft plugins --json | head`: the reader left; no traceback, and none at exit either.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except DraftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from draft_core.outputs import is_place_error, unwritable
        from draft_core.training.signals import Interrupted

        if isinstance(exc, Interrupted):
            return 130
        if is_place_error(exc):  # an unwritable --out, a read-only or full disk: the place, not a bug
            print(f"error: {unwritable(exc)}", file=sys.stderr)
            return 2
        raise
