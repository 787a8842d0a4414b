"""Checks of command-line input that must pass before anything is created or loaded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from draft_core.errors import DraftError


def check_argv_text(argv: Sequence[str]) -> None:
    """Arguments are text: bytes that are not UTF-8 reach Python as lone surrogates, which
    could not be written into config.yaml later."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise DraftError(
                f"the argument {shown!r} is not valid UTF-8 text; give names, paths and values as UTF-8."
            ) from None


def check_new_run_dir(run_dir: Path) -> None:
    """A new run's folder must be absent or an empty folder, under folders (not files)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise DraftError(f"--out '{run_dir}' is a file; give a folder for the run (it is created if missing).")
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise DraftError(f"--out '{run_dir}' is inside '{parent}', which is a file, not a folder.")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise DraftError(
            f"run folder '{run_dir}' already exists and is not empty. Continue it with "
            f"`draft train --resume {run_dir}`, or choose another --out."
        )
