"""``metrics.jsonl``: one JSON row per optimiser step, cut back to a checkpoint's step on resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def truncate_metrics(path: Path, step: int) -> None:
    """Drop rows after ``step`` (they will run again) and a row cut short by a kill."""
    if not path.exists():
        return
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            rows.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    tmp.replace(path)


def step_line(row: dict[str, Any], steps: int) -> str:
    """One line for a metrics row, printed every ``train.log_every`` steps when there is no progress bar."""
    head = f"step {row['step']}/{steps}"
    if "skipped" in row:
        return f"{head}: update skipped ({row['skipped']}: {row.get('reason', '')})"
    return (
        f"{head}: reward {row['reward_mean']:.4g} (std {row.get('reward_std', 0.0):.3g}), loss {row['loss']:.4g}, "
        f"grad norm {row['grad_norm']:.3g}, {row['seconds']:.2f} s/step"
    )
