"""Config keys explain themselves: every key has help, `draft config` lists each with its type and default,
and docs/config.md is the page generated from the fields (this test fails when it is stale)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from draft_core import cli
from draft_core.config import Config, reference
from draft_core.config.fields import reference_rows

ROOT = Path(__file__).resolve().parents[1]


def _keys(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        yield prefix + f.name
        if dataclasses.is_dataclass(value):
            yield from _keys(value, f"{prefix}{f.name}.")


def test_docs_config_md_is_generated_from_the_fields():
    page = (ROOT / reference.DOC_PATH).read_text(encoding="utf-8")
    assert page == reference.markdown(), "docs/config.md is stale: run `draft config --markdown docs/config.md`"


def test_every_key_has_help_type_and_default(capsys):
    rows = {name: (kind, default, help) for name, kind, default, help in reference_rows(Config)}
    assert list(rows) == list(_keys(Config()))  # every key, in the schema's order
    assert all(help.strip() for help in (r[2] for r in rows.values())), [k for k, r in rows.items() if not r[2].strip()]
    assert rows["train.steps"][:2] == ("int", "2000") and rows["train.ema.decay"][:2] == ("float or null", "null")
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    for name, (kind, default, _) in rows.items():
        line = f"[{name}]" if kind == "section" else f"  {name}  ({kind}; default: {default or reference.EMPTY})"
        assert line in out, name


def test_markdown_to_a_file(tmp_path, capsys):
    assert cli.main(["config", "--markdown", str(tmp_path / "config.md")]) == 0
    assert (tmp_path / "config.md").read_text(encoding="utf-8") == reference.markdown()
    assert "| `train.lr` | float | `0.0004` |" in reference.markdown()
