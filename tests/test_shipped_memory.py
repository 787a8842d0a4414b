"""The shipped configs state their planned peak (a header line ``draft plan`` wrote), and the configs
table of README.md and docs/memory.md is the one those lines give (scripts/memory_table.py regenerates it)."""

from __future__ import annotations

from pathlib import Path

from draft_core.planning.budget import parse_bytes, smallest_card
from draft_core.planning.shipped import BEGIN, END, TABLE_FILES, header_line, read_header, with_table, write_header

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_configs_state_their_planned_peak_and_card():
    planned = [p for p in sorted((ROOT / "configs").glob("*.yaml")) if read_header(p) is not None]
    # tracing a published model takes minutes: each config's line is written by scripts/memory_table.py --plan
    assert {p.name for p in planned} == {p.name for p in (ROOT / "configs").glob("*.yaml")}
    for path in planned:
        device, peak, card = read_header(path)
        assert device == "cuda"
        expected = smallest_card(parse_bytes(peak.replace(" ", "")))
        assert card == (f"{expected} GiB" if expected else "over 80 GiB"), path.name


def test_the_configs_tables_are_generated_from_the_configs():
    assert "README.md" in TABLE_FILES
    for name in TABLE_FILES:
        page = (ROOT / name).read_text(encoding="utf-8")
        assert BEGIN in page and END in page, name
        assert page == with_table(page, ROOT / "configs"), (
            f"{name}'s configs table is stale: python scripts/memory_table.py"
        )


def test_a_stale_table_is_caught():
    page = (ROOT / "README.md").read_text(encoding="utf-8")
    stale = page.replace("| `configs/tiny-jpeg.yaml` |", "| `configs/tiny-jpeg-old.yaml` |")
    assert stale != page and with_table(stale, ROOT / "configs") == page


def test_header_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# a comment\nmodel:\n  name: tiny-random\n")
    write_header(path, 21 * 2**30)
    write_header(path, 30 * 2**30)  # replaced, not added
    text = path.read_text()
    assert text.splitlines()[0] == header_line(30 * 2**30) and text.count("Planned peak") == 1
    assert read_header(path) == ("cuda", "30.0 GiB", "40 GiB") and "# a comment" in text
