"""What every command's output files share: the usual permissions, and one paragraph (not a
traceback) when a location cannot be written.

safetensors writes its files with mode 0600 (through a private temporary file), so a LoRA,
a checkpoint or a fused pipeline would be unreadable to the rest of a group on a shared file
system; ``usual_permissions`` gives them what ``open()`` would have: 0666 less the umask.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from draft_core.errors import DraftError

# Errors of the place written to, not of draft: permissions, a read-only or full file system.
PLACE_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class Unwritable(DraftError):
    """An output location cannot be created or written."""


def unwritable(exc: OSError, path: str | Path | None = None) -> Unwritable:
    """One paragraph for an OSError of the place written to."""
    where = exc.filename or path
    if exc.errno == errno.ENOSPC:
        return Unwritable(
            f"cannot write '{where}': {exc.strerror}. Free some space, or choose another location (--out)."
        )
    return Unwritable(
        f"cannot use '{where}': {exc.strerror or exc}. Give a location you can write (e.g. another --out) "
        f"and inputs you can read, or fix the permissions there."
    )


def is_place_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in PLACE_ERRORS


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_permissions(path: str | Path) -> None:
    """Files under ``path`` (or the file itself) get mode 0666 less the umask, as ``open()`` gives."""
    path = Path(path)
    mode = 0o666 & ~_umask()
    for f in [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
        if f.stat().st_mode & 0o777 != mode:
            os.chmod(f, mode)
