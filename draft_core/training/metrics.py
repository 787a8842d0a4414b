"""``metrics.jsonl``: one JSON row per optimiser step, cut back to a checkpoint's step on resume."""

from __future__ import annotations

import json
from pathlib import Path


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
