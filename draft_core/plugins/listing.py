"""The table ``draft plugins`` prints."""

from __future__ import annotations

from draft_core.plugins.arguments import argument_list
from draft_core.plugins.registry import KINDS, Registry, pipeline_classes


def _where(distribution: str | None, version: str | None) -> str:
    if distribution and version:
        return f"{distribution}=={version}"
    return distribution or "-"


def format_plugins(registry: Registry) -> str:
    """The table printed by ``draft plugins`` (each name with its provider and its arguments with
    their defaults), then load errors, name conflicts and allow-list notes if any."""
    rows = [("KIND", "NAME", "DISTRIBUTION", "PLUGIN", "ARGUMENTS")]
    for kind in KINDS:
        for e in registry.entries(kind):
            if kind == "model":  # a family is chosen by its pipeline classes, not built from arguments
                args = "loads " + (", ".join(pipeline_classes(e.factory)) or "-")
            else:
                args = ", ".join(a.text() for a in argument_list(e.factory, skip=("inner",))) or "-"
            rows.append((kind, e.name, _where(e.distribution, e.version), e.plugin, args))
    lines: list[str] = []
    if len(rows) == 1:
        lines.append("No plugins registered.")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    if registry.load_errors:
        lines += ["", "Load errors:"]
        for err in registry.load_errors:
            lines.append(f"  {err.entry_point} ({_where(err.distribution, err.version)}): {err.error}")
    if registry.conflicts:
        lines += ["", "Name conflicts (the first keeps the name above; a run that names it is refused):"]
        for c in registry.conflicts:
            lines.append(
                f"  {c.message()} Dropped: plugin '{c.dropped.plugin}'"
                f" ({_where(c.dropped.distribution, c.dropped.version)})."
            )
    if registry.claim_conflicts:
        lines += ["", "Pipeline classes claimed twice (the first family loads such folders):"]
        lines += [f"  {c.message()}" for c in registry.claim_conflicts]
    if registry.allow_list is not None:
        lines += ["", f"DRAFT_PLUGINS={','.join(registry.allow_list)}: other third-party plugins were not loaded."]
        if registry.unknown_allowed:
            lines.append(
                f"DRAFT_PLUGINS names {', '.join(map(repr, registry.unknown_allowed))}, which no"
                " installed distribution provides."
            )
    return "\n".join(lines)
