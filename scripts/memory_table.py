"""The shipped configs' table (README.md and docs/memory.md), and the planned peak in each config's header line.

    python scripts/memory_table.py                       # rewrite both tables from the configs' header lines
    python scripts/memory_table.py --plan configs/X.yaml # trace X (draft plan, cuda) and rewrite its header line only

Tracing a config at a published size takes minutes on a CPU (nothing is downloaded: the
published architectures on the meta device). tests/test_shipped_memory.py fails when a table
differs from what the configs' header lines say.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from draft_core.config import load_config
    from draft_core.planning.shipped import TABLE_FILES, header_line, with_table, write_header
    from draft_core.planning.step import plan_step

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--plan", nargs="*", type=Path, default=[], help="configs to trace (their header line is rewritten)"
    )
    a = ap.parse_args(argv)
    for path in a.plan:
        t0 = time.perf_counter()
        config = load_config(path)
        # One micro-batch: accumulation adds no activations (the LoRA's gradients are summed in place),
        # and tracing 16 micro-steps of a 12B model would take 16 times as long.
        config.train.grad_accum = 1
        trace = plan_step(config, "cuda")
        write_header(path, trace.peak, "cuda")
        print(f"{path}: {header_line(trace.peak)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if a.plan:
        return 0
    for name in TABLE_FILES:
        page = ROOT / name
        page.write_text(with_table(page.read_text(encoding="utf-8"), ROOT / "configs"), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
