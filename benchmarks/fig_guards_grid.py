"""The guards' story in one picture: the quickstart's sample grids at chosen steps, side by side.

    draft train --preset quickstart --set train.steps=120 --out runs/unguarded120 --no-progress
    python benchmarks/fig_guards_grid.py runs/unguarded120 --out docs/images/quickstart-guards-grid.png

The run writes a grid of fixed prompts and seeds every ``train.sample_every`` steps
(``samples/step-XXXXXX.png``); this script puts the chosen ones side by side under their
headings. The defaults tell the guarded quickstart's story (RESULTS section 19): its training is
the unguarded run's bit for bit up to the stop, so the unguarded run's grids at step 60 (the
LoRA `--preset quickstart-guarded` keeps in ``lora/best/``) and 70 (where its rule stops the run)
are the guarded run's, and step 120 is where the unguarded run ends.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from draft_core.media import save_side_by_side  # noqa: E402

DEFAULT = {0: "step 0", 60: "60: kept", 70: "70: stopped", 120: "120: unguarded"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder whose samples/ holds the steps' grids")
    parser.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT))
    parser.add_argument("--labels", nargs="+", help="one heading per step (default: the guards' story)")
    parser.add_argument("--out", type=Path, default=Path("quickstart-guards-grid.png"))
    args = parser.parse_args(argv)
    labels = args.labels or [DEFAULT.get(s, f"step {s}") for s in args.steps]
    grids = [args.run / "samples" / f"step-{s:06d}.png" for s in args.steps]
    missing = [str(g) for g in grids if not g.is_file()]
    if missing or len(labels) != len(grids):
        why = f"no grid at {', '.join(missing)}" if missing else f"{len(labels)} labels for {len(grids)} steps"
        print(f"fig_guards_grid: {why}; train with train.sample_every dividing every step asked for.", file=sys.stderr)
        return 2
    print(save_side_by_side(grids, args.out, labels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
