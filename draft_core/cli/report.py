"""``draft report``: rebuild a run's ``report.html``, or one page overlaying several runs' curves."""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from draft_core.report import write_report
    from draft_core.report.collect import check_run_dir

    for run in args.runs:  # every folder checked before anything is written
        check_run_dir(run)
    out = write_report(args.runs, args.out)
    print(f"wrote {out} (open it in a browser; it needs no server and no network)")
    return 0


def add_parser(sub) -> None:
    rp = sub.add_parser(
        "report", help="write a run's report page (curves, grids over training, model card), or compare runs"
    )
    rp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder(s) written by draft train")
    rp.add_argument(
        "--out", default=None, help="the HTML file to write (default RUN_DIR/report.html; needed for several runs)"
    )
    rp.set_defaults(func=cmd_report)
