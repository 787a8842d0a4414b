"""The run report: ``report.html`` in every run folder, one self-contained page to watch and share a run.

``write_report([run])`` (re)builds a run's page from its folder; with several runs, one page
overlays their curves. ``refresh_report`` is the training loop's hook (draft_core.training.pictures):
it rewrites the page whenever a grid or a validation is added, and never stops training over it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from draft_core.errors import DraftError
from draft_core.report.collect import RunData, read_run
from draft_core.rundir import REPORT as REPORT_NAME

__all__ = ["REPORT_NAME", "RunData", "read_run", "refresh_report", "write_report"]


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None, pending: dict | None = None) -> Path:
    """Write the page for ``run_dirs`` to ``out`` (default: ``RUN/report.html`` for one run).

    pending: a metrics row not in ``metrics.jsonl`` yet (a validation's scores, written with
    its step's row a moment later), shown as if it were. The page is written to a temporary
    file first and moved into place, so a browser reloading it during training never reads half.
    """
    from draft_core.report.page import render

    if not run_dirs:
        raise DraftError("draft report needs at least one run folder.")
    if out is None and len(run_dirs) > 1:
        raise DraftError(
            f"draft report with {len(run_dirs)} runs writes one comparison page: give --out FILE "
            f"(e.g. --out compare.html); a single run's page goes to RUN/{REPORT_NAME} by default."
        )
    paths = [Path(p) for p in run_dirs]
    runs = [read_run(p, _unique_name(p, paths), pending if i == 0 else None) for i, p in enumerate(paths)]
    out = Path(out) if out is not None else paths[0] / REPORT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render(runs), encoding="utf-8")
    tmp.replace(out)
    return out


def _unique_name(path: Path, paths: list[Path]) -> str:
    """The folder's name, with its parent's where another run has the same name."""
    if sum(p.name == path.name for p in paths) > 1:
        return f"{path.parent.name}/{path.name}"
    return path.name


def refresh_report(
    run_dir: str | Path, warn: Callable[[str], None] | None = None, pending: dict | None = None
) -> Path | None:
    """Rewrite ``run_dir/report.html``; a failure is reported through ``warn`` (default: stderr), never raised."""
    try:
        return write_report([run_dir], pending=pending)
    except Exception as exc:  # the page is a view of the run: it must never cost the run
        message = f"[draft] warning: could not write {Path(run_dir) / REPORT_NAME} ({type(exc).__name__}: {exc}); training continues"
        if warn is None:
            print(message, file=sys.stderr)
        else:
            warn(message)
        return None
