"""The table ``draft plugins`` prints."""

from __future__ import annotations

from draft_core.plugins.registry import KINDS, Registry


def format_plugins(registry: Registry) -> str:
    """The table printed by ``draft plugins``, then the load errors if any."""
    rows = [("KIND", "NAME", "DISTRIBUTION", "PLUGIN")]
    for kind in KINDS:
        for e in registry.entries(kind):
            dist = e.distribution or "-"
            if e.distribution and e.version:
                dist = f"{e.distribution}=={e.version}"
            rows.append((kind, e.name, dist, e.plugin))
    lines: list[str] = []
    if len(rows) == 1:
        lines.append("No plugins registered.")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    if registry.load_errors:
        lines += ["", "Load errors:"]
        for err in registry.load_errors:
            where = err.distribution or "-"
            if err.distribution and err.version:
                where = f"{err.distribution}=={err.version}"
            lines.append(f"  {err.entry_point} ({where}): {err.error}")
    if registry.allow_list is not None:
        lines += ["", f"DRAFT_PLUGINS={','.join(registry.allow_list)}: other third-party"
                      " plugins were not loaded."]
    return "\n".join(lines)
