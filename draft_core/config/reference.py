"""The config reference, generated from the schema's fields (their type, default and help): the text
``draft config`` prints and the page docs/config.md (``draft config --markdown``)."""

from __future__ import annotations

import textwrap

from draft_core.config.fields import reference_rows

EMPTY = '""'  # how an empty default is shown
DOC_PATH = "docs/config.md"  # in the repository; tests/test_config_reference.py fails when it is stale


def _rows() -> list[tuple[str, str, str, str]]:
    from draft_core.config.schema import Config

    return reference_rows(Config)


def text(width: int = 100) -> str:
    """Every key, one block each: ``key (type, default ...)`` and its help, indented."""
    lines = []
    for name, kind, default, help in _rows():
        if kind == "section":
            lines += ["", f"[{name}]  {help}".rstrip()]
            continue
        lines.append(f"  {name}  ({kind}; default: {default or EMPTY})")
        lines += textwrap.wrap(help, width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines).lstrip("\n") + "\n"


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def markdown() -> str:
    """docs/config.md: a table per section (the plugin sections in one table of their own)."""
    out = [
        "# Config reference",
        "",
        "<!-- Generated from draft_core/config/schema.py by `draft config --markdown`; do not edit by hand. -->",
        "",
        "Every key of a run's config.yaml, with its type, default and meaning. Set one with "
        "`--set KEY=VALUE` (e.g. `--set train.steps=50`); `draft train ... --dry-run` prints a resolved config. "
        "The plugin sections (`sampler`, `estimator`, `reward`) take a registered name and that plugin's "
        "arguments: `draft plugins` lists them.",
    ]
    tables: dict[str, tuple[str, list[str]]] = {}
    for name, kind, default, help in _rows():
        if kind == "section":
            tables[name] = (help, [])
            continue
        parent = name.rpartition(".")[0] or "plugin sections"
        tables.setdefault(parent, ("A registered plugin's name and its arguments (`draft plugins`).", []))
        shown = f"`{_cell(default)}`" if default else '`""`'
        tables[parent][1].append(f"| `{name}` | {_cell(kind)} | {shown} | {_cell(help)} |")
    for heading, (doc, rows) in tables.items():
        title = heading if heading == "plugin sections" else f"`{heading}`"
        out += [
            "",
            f"## {title[0].upper() + title[1:]}",
            "",
            doc,
            "",
            "| key | type | default | meaning |",
            "| --- | --- | --- | --- |",
            *rows,
        ]
    return "\n".join(out) + "\n"
