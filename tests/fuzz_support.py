"""Running the CLI in-process for the fuzz walls (tests/test_fuzz_*.py): exit code, stderr, and the tally.

Each case ends in one of: a clear error (exit 2, one paragraph, no traceback), a correct result (exit 0,
checked by the test), a traceback (an exception escaped ``main``), or a silent wrong result (exit 0 on bad
input, or a wrong output). The tally is printed at the end of each fuzz module (``-s`` shows it) and
``--slow`` runs ten times the examples.
"""

from __future__ import annotations

import contextlib
import io
import os
import traceback
from collections import Counter
from dataclasses import dataclass

from draft_core.cli import main

TALLY: Counter = Counter()


def examples(n: int) -> int:
    """``n`` Hypothesis examples by default, ten times as many under ``pytest --slow``."""
    return n * 10 if os.environ.get("DRAFT_FUZZ_SLOW") == "1" else n


@dataclass
class Outcome:
    code: int | None
    out: str
    err: str
    trace: str | None  # the traceback of an exception that escaped main, if any


def run_cli(argv: list[str]) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    trace = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors exit 2 by themselves
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - a traceback is the outcome being counted
            code, trace = None, traceback.format_exc()
    return Outcome(code, out.getvalue(), err.getvalue(), trace)


def judge(outcome: Outcome, bad: bool | None, why: str, correct=None) -> None:
    """Tally and check one case: bad input must end in a clear error; good input in exit 0 and ``correct()``;
    ``bad=None``: either (input that is fine as far as the command reads it, which may still fail later)."""
    TALLY["tried"] += 1
    if outcome.trace is not None or "Traceback (most recent call last)" in outcome.err:
        TALLY["tracebacks"] += 1
        raise AssertionError(f"traceback for {why}:\n{outcome.trace or outcome.err}")
    if bad is None:
        bad = outcome.code != 0
    if bad:
        if outcome.code == 0:
            TALLY["silent"] += 1
            raise AssertionError(f"silent acceptance of {why}: exit 0\n{outcome.err}")
        assert outcome.code == 2, f"{why}: exit {outcome.code}, expected 2\n{outcome.err}"
        message = outcome.err.strip()
        assert message.startswith("error: ") and "\n\n" not in message, f"{why}: not one paragraph:\n{message}"
        TALLY["clear errors"] += 1
        return
    assert outcome.code == 0, f"{why}: a good input was refused (exit {outcome.code}):\n{outcome.err}"
    if correct is not None:
        try:
            correct()
        except AssertionError:
            TALLY["silent"] += 1
            raise
    TALLY["correct"] += 1


def report(name: str) -> str:
    keys = ("tried", "clear errors", "correct", "tracebacks", "silent")
    return f"[fuzz {name}] " + ", ".join(f"{k}: {TALLY[k]}" for k in keys)
