"""The shipped configs' planned memory: a header line in each file, and the table made from them.

Each file in ``configs/`` starts with one line that ``draft plan`` wrote (``scripts/memory_table.py
--plan``, which traces the config on the meta device as CUDA would run it)::

    # Planned peak (draft plan, cuda): 21.3 GiB; smallest card: 24 GiB.

The table of the shipped configs, in README.md (what a newcomer with a GPU reads first) and
docs/memory.md, is generated from those lines and the configs' own settings
(``scripts/memory_table.py`` rewrites it between its two markers in each of ``TABLE_FILES``);
tests/test_shipped_memory.py fails when a table is not what the configs say.
"""

from __future__ import annotations

import re
from pathlib import Path

from draft_core.planning.budget import format_bytes, smallest_card

HEADER = re.compile(
    r"^# Planned peak \(draft plan, (\w+)\): ([\d.]+ (?:B|KiB|MiB|GiB|TiB)); smallest card: (\d+ GiB|over 80 GiB)\.$",
    re.M,
)
BEGIN, END = "<!-- memory table: scripts/memory_table.py -->", "<!-- end of memory table -->"
#: the files (relative to the repository root) that hold the generated table
TABLE_FILES = ("README.md", "docs/memory.md")


def header_line(peak: int, device_type: str = "cuda") -> str:
    card = smallest_card(peak)
    return (
        f"# Planned peak (draft plan, {device_type}): {format_bytes(peak)}; "
        f"smallest card: {f'{card} GiB' if card else 'over 80 GiB'}."
    )


def read_header(path: Path) -> tuple[str, str, str] | None:
    """(device type, peak as written, smallest card) from a config's header line, or None."""
    match = HEADER.search(Path(path).read_text(encoding="utf-8"))
    return (match.group(1), match.group(2), match.group(3)) if match else None


def write_header(path: Path, peak: int, device_type: str = "cuda") -> None:
    """Put the header line first in ``path`` (replacing an older one)."""
    text = HEADER.sub("", Path(path).read_text(encoding="utf-8")).lstrip("\n")
    Path(path).write_text(header_line(peak, device_type) + "\n" + text, encoding="utf-8")


def describe(path: Path) -> str:
    """The settings that decide a config's memory, in a few words (as the file gives them, before
    resolution fills in every default)."""
    from draft_core.config.schema import parse_config

    c = parse_config(path)
    est = ", ".join(f"{k}={v}" for k, v in c.estimator.items() if k != "name")
    reward = c.reward.get("name") or "+".join(c.reward.get("weights", {}))
    levers = [f"quantize {c.model.quantize}"] if c.model.quantize != "none" else []
    return (
        f"{c.estimator['name']}({est}), {reward}, batch {c.train.batch_size} x {c.train.grad_accum}, "
        f"LoRA rank {c.lora.rank}{''.join(', ' + x for x in levers)}"
    )


def table(configs: Path) -> str:
    """The table: one row per shipped config with a header line."""
    from draft_core.config import load_config

    lines = ["| config | model | settings | planned peak | smallest card |", "| --- | --- | --- | --- | --- |"]
    for path in sorted(Path(configs).glob("*.yaml")):
        found = read_header(path)
        if found is None:
            continue
        device, peak, card = found
        lines.append(
            f"| `configs/{path.name}` | {load_config(path).model.name} | {describe(path)} | "
            f"{peak} ({device}) | {card} |"
        )
    return "\n".join(lines)


def with_table(readme: str, configs: Path) -> str:
    """``readme`` with the text between the markers replaced by ``table(configs)``."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"the page has no memory table markers ({BEGIN} ... {END})")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(configs)}\n{END}{tail}"


__all__ = ["TABLE_FILES", "header_line", "read_header", "table", "with_table", "write_header", "format_bytes"]
