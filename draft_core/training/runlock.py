"""One writer per run folder: the process that trains in a folder holds an OS-level lock on it.

The lock is ``fcntl.flock`` on ``RUN_DIR/.draft-lock``, so it dies with its process: a run
killed with SIGKILL (or a machine that rebooted) leaves a file but no lock, and the folder
can be resumed at once. The file holds the holder's pid, host, start time and command, for
the one paragraph a second writer or resumer is refused with. A new run's folder that a
run left before completing a step (interrupted during the step-0 grid, say) is emptied, so
the same command works again. Platforms without ``fcntl`` train without the lock.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from draft_core import rundir
from draft_core.errors import DraftError
from draft_core.outputs import unwritable
from draft_core.rundir import RunDir

LOCK_NAME = rundir.LOCK
# What a run writes before its first step completes; a folder holding only these (and no
# checkpoint) is a run that never started, and a new run may take it over.
EARLY_ENTRIES = {LOCK_NAME, rundir.CONFIG, rundir.METRICS, rundir.SAMPLES, "logs", rundir.CHECKPOINTS, rundir.REPORT}

try:
    import fcntl
except ImportError:  # Windows: no advisory locks of this kind
    fcntl = None  # type: ignore[assignment]


class RunFolderBusy(DraftError):
    """Another live process writes this run folder."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info["started"])))
        return (
            f"process {int(info['pid'])} on host {info['host']}, started {started} (`{info.get('command', 'draft')}`)"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its details yet)"


class RunLock:
    """The held lock of one run folder; ``release()`` (or the process's end) lets it go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before the unlock: a newcomer re-checks the inode (lock_run_folder)
        except OSError:
            pass
        os.close(self.fd)  # closing the descriptor releases the flock
        self.fd = None

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # at interpreter exit; the process's end releases the lock anyway
            pass


def _busy(run_dir: Path, path: Path) -> RunFolderBusy:
    return RunFolderBusy(
        f"run folder '{run_dir}' is in use by {_holder(path)}; one process writes a run folder at a time. "
        f"Wait for it to finish (or stop it), then `draft train --resume {run_dir}`; or give another --out "
        f"for a new run. The lock dies with its process, so a folder whose run was killed can be resumed at once."
    )


def lock_run_folder(run_dir: Path) -> RunLock | None:
    """Create ``run_dir`` if needed and take its lock; RunFolderBusy naming the holder when another
    process has it, Unwritable when the folder cannot be written. None where there is no flock."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(exc, run_dir) from None
    if fcntl is None:
        return None
    path = run_dir / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise unwritable(exc, run_dir) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(run_dir, path) from None
        try:  # the holder that just released it may have removed the file: lock the current one
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        "command": " ".join(["draft", *sys.argv[1:]]) if sys.argv and sys.argv[0] else "draft",
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    return RunLock(path, fd)


def check_not_in_use(run_dir: Path) -> None:
    """Refuse early (before a model loads) when a live process holds ``run_dir``'s lock."""
    path = run_dir / LOCK_NAME
    if fcntl is None or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # unreadable: lock_run_folder decides
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(run_dir, path) from None
    finally:
        os.close(fd)


def reuse_unstarted(run_dir: Path, empty: bool = True) -> bool:
    """True when ``run_dir`` holds only what a run writes before its first step (and no checkpoint)
    and no process holds it: a new run may then use it, and with ``empty`` it is emptied for it."""
    from draft_core.training.checkpoint import latest_checkpoint

    if not run_dir.is_dir():
        return False
    check_not_in_use(run_dir)
    if not RunDir(run_dir).has_config():
        return False
    names = {p.name for p in run_dir.iterdir()}
    if (
        not names <= EARLY_ENTRIES
        or latest_checkpoint(RunDir(run_dir).checkpoints) is not None
        or _has_step_rows(run_dir)
    ):
        return False
    if not empty:
        return True
    for child in run_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    print(
        f"[draft] {run_dir} holds a run that stopped before its first step; it is started again there", file=sys.stderr
    )
    return True


def _has_step_rows(run_dir: Path) -> bool:
    """metrics.jsonl has a row of a step >= 1 (step 0's validation row alone does not count)."""
    try:
        lines = RunDir(run_dir).metrics.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return False
    for line in lines:
        try:
            if int(json.loads(line).get("step", 0)) > 0:
                return True
        except (ValueError, AttributeError, TypeError):
            return True  # not what draft writes: keep the folder
    return False
