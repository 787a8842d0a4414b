"""Signals during training: SIGINT/SIGTERM ask the loop to stop after the current step, so the
checkpoint is exact; a second signal stops at once."""

from __future__ import annotations

import signal
import sys
from typing import Any

from tqdm.auto import tqdm


class Interrupted(Exception):
    """Raised inside the loop on SIGINT/SIGTERM so the run can checkpoint and exit cleanly."""


class StopRequest:
    """SIGINT/SIGTERM (Ctrl-C, schedulers, preemption) ask the loop to stop after the current
    step, so the checkpoint is exact; a second signal stops at once."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise Interrupted(signal.Signals(signum).name)
        self.signal = signal.Signals(signum).name
        tqdm.write("[draft] stopping after this step (signal again to stop now)", file=sys.stderr)

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, h in self._previous.items():
            signal.signal(sig, h)
