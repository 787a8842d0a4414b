"""The report page's HTML: one self-contained file for one run or an overlay of several.

Curves (reward, every ``val/<reward>``, and a picker for the other per-step metrics) are
chart specs in the page's JSON block, drawn by ``script.SCRIPT``; with several runs every
chart overlays them, one colour per run. Each run then gets its own block: grids over
training on a slider, before/after, the commands to resume, sample, and share it, its
model card and its config.
"""

from __future__ import annotations

import html
import json
import re
import time

from draft_core.report.collect import RunData
from draft_core.report.script import SCRIPT, STYLE

COLORS = ["#2f6fd6", "#e0662b", "#2a9d55", "#c2366b", "#7a52c7", "#8c6d1f", "#1b9aa8", "#d4a017", "#5d6470", "#b53a2a"]
REWARD = "reward_mean"


def _smooth(ys: list[float | None], window: int) -> list[float | None]:
    """Trailing moving average over the last ``window`` finite values (None before the first full window)."""
    out, kept = [], []
    for y in ys:
        if y is not None:
            kept.append(y)
        out.append(sum(kept[-window:]) / window if y is not None and len(kept) >= window else None)
    return out


def reward_chart(runs: list[RunData]) -> dict:
    """Batch-mean reward per step (± std band) and its moving average, for each run."""
    series = []
    for i, run in enumerate(runs):
        if REWARD not in run.series:
            continue
        color, label = COLORS[i % len(COLORS)], (run.name if len(runs) > 1 else "reward (batch mean)")
        s = run.series[REWARD]
        extra = {}
        if "reward_std" in run.series and len(runs) == 1:  # the ± std band, for one run only
            std = dict(zip(run.series["reward_std"].x, run.series["reward_std"].y))
            ds = [std.get(x) or 0.0 for x in s.x]
            extra = {
                "lo": [y - d if y is not None else None for y, d in zip(s.y, ds)],
                "hi": [y + d if y is not None else None for y, d in zip(s.y, ds)],
            }
        window = max(1, len(s.finite()) // 20)
        series.append(
            {
                "name": label,
                "group": label,
                "color": color,
                "x": s.x,
                "y": s.y,
                "width": 1,
                "opacity": 0.55 if window > 1 else 1,
                **extra,
            }
        )
        if window > 1:
            series.append(
                {
                    "name": f"{label}: moving average ({window})",
                    "group": label,
                    "legend": False,
                    "color": color,
                    "x": s.x,
                    "y": _smooth(s.y, window),
                    "width": 2.2,
                }
            )
    return {"title": "reward", "xlabel": "step", "series": series}


def metric_chart(runs: list[RunData], key: str) -> dict:
    series = []
    for i, run in enumerate(runs):
        if key in run.series:
            s = run.series[key]
            label = run.name if len(runs) > 1 else key
            sparse = len(s.x) <= 12 or 2 * len(s.x) <= len(run.steps)  # e.g. validation every N steps
            series.append(
                {"name": label, "group": label, "color": COLORS[i % len(COLORS)], "x": s.x, "y": s.y, "markers": sparse}
            )  # mark each of a few points
    return {"title": key, "xlabel": "step", "series": series}


def hacking_chart(runs: list[RunData]) -> dict | None:
    """Reward hacking at a glance: the training reward against the held-out rewards (val/*) over steps,
    with the guards' stop and best validation marked (docs/monitoring.md: Guards against reward hacking)."""
    series, marks = [], []
    for i, run in enumerate(runs):
        val = [k for k in run.series if k.startswith("val/")]
        if not val:
            continue
        prefix = f"{run.name}: " if len(runs) > 1 else ""
        if REWARD in run.series:
            s = run.series[REWARD]
            window = max(1, len(s.finite()) // 20)
            series.append(
                {
                    "name": f"{prefix}training reward" + (f" (moving average, {window})" if window > 1 else ""),
                    "color": COLORS[i % len(COLORS)],
                    "x": s.x,
                    "y": _smooth(s.y, window),
                    "width": 2.2,
                }
            )
        for j, k in enumerate(val):
            series.append(
                {
                    "name": f"{prefix}{k} (held out)",
                    "color": COLORS[(i + j + 1) % len(COLORS)],
                    "x": run.series[k].x,
                    "y": run.series[k].y,
                    "markers": True,
                    "dash": "5 3",
                }
            )
        if run.guard_stop is not None:
            marks.append({"x": run.guard_stop[0], "label": f"{prefix}stopped: {run.guard_stop[1]}", "kind": "stop"})
        if run.best_step is not None:
            marks.append({"x": run.best_step, "label": f"{prefix}best (lora/best/)", "kind": "best"})
    if not series:
        return None
    return {
        "title": "hacking: training reward against held-out rewards",
        "xlabel": "step",
        "series": series,
        "marks": marks,
    }


def page_data(runs: list[RunData]) -> dict:
    keys = [k for run in runs for k in run.series]
    keys = list(dict.fromkeys(keys))
    val = [k for k in keys if k.startswith("val/")]
    other = [k for k in keys if k not in val and k not in (REWARD, "reward_std")]
    return {
        "runs": [
            {
                "name": r.name,
                "grids": [{"step": g.step, "src": g.src} for g in r.grids],
                "val_grids": [{"step": g.step, "src": g.src} for g in r.val_grids],
            }
            for r in runs
        ],
        "charts": {
            "reward": reward_chart(runs),
            **({"hacking": hacking} if (hacking := hacking_chart(runs)) else {}),
            **{k: metric_chart(runs, k) for k in val},
        },
        "other": {k: metric_chart(runs, k) for k in other},
    }


def render(runs: list[RunData]) -> str:
    """The whole page for one or more runs."""
    data = page_data(runs)
    e = html.escape
    if len(runs) == 1:
        run = runs[0]
        heading, sub = run.name, f"{run.title()} · {_status(run)}"
    else:
        heading, sub = f"{len(runs)} runs compared", " · ".join(f"{r.name}: {r.title()}, {_status(r)}" for r in runs)
    charts = "".join(f'<div class="chart-box" data-chart="{e(k)}"></div>' for k in data["charts"])
    if data["other"]:
        options = "".join(
            f'<option value="{e(k)}"{" selected" if k == _default_other(data["other"]) else ""}>{e(k)}</option>'
            for k in data["other"]
        )
        charts += f'<div><label class="note">metric <select class="metric">{options}</select></label><div class="chart-box" data-chart="other"></div></div>'
    blocks = "".join(_run_block(i, run, len(runs) > 1) for i, run in enumerate(runs))
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")  # never closes the script element
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{e(heading)} · draft report</title>'
        f"<style>{STYLE}</style></head><body><main>"
        f'<h1>{e(heading)}</h1><div class="sub">{e(sub)}</div>'
        f'<section><h2>Curves</h2><p class="note">Hover for values; drag across a plot to zoom, double-click to reset; '
        f'click a legend entry to hide it.</p><div class="charts">{charts}</div>{_summary(runs)}</section>'
        f'{blocks}<p class="note">Written by draft at {time.strftime("%Y-%m-%d %H:%M:%S")}; '
        f"rebuild with <code>draft report</code>.</p></main>"
        f'<script type="application/json" id="draft-report-data">{payload}</script>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def _default_other(other: dict) -> str:
    return next((k for k in ("kl", "loss", "grad_norm") if k in other), next(iter(other)))


def _status(run: RunData) -> str:
    planned = run.planned_steps
    if run.guard_stop is not None:
        return f"stopped by train.stop_when at step {run.guard_stop[0]}: {run.guard_stop[1]}"
    if planned and run.last_step >= planned:
        return f"finished, {run.last_step} steps"
    return f"step {run.last_step} of {planned or '?'}"


def _summary(runs: list[RunData]) -> str:
    """First and last rewards (means of up to ten steps) and wall time, one row per run."""
    rows = []
    for run in runs:
        ys = run.series[REWARD].finite() if REWARD in run.series else []
        first = sum(ys[:10]) / len(ys[:10]) if ys else None
        last = sum(ys[-10:]) / len(ys[-10:]) if ys else None
        seconds = sum(run.series["seconds"].finite()) if "seconds" in run.series else 0.0
        vals = ", ".join(
            f"{k} {v.finite()[-1]:.4g}" for k, v in run.series.items() if k.startswith("val/") and v.finite()
        )
        cells = [run.name, str(run.last_step), _fmt(first), _fmt(last), f"{seconds / 60:.1f} min", vals or "-"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>"
        for h in ("run", "steps", "reward, first 10 steps", "reward, last 10 steps", "training time", "last validation")
    )
    return f'<table class="summary"><tr>{head}</tr>{"".join(rows)}</table>'


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _run_block(index: int, run: RunData, several: bool) -> str:
    e = html.escape
    pictures = []  # side by side where the page is wide enough
    if run.grids:
        pictures.append(
            _slider(
                index,
                "grids",
                "Samples over training",
                run.grids,
                "Fixed prompts and noise, the same at every step (labelled on the image).",
            )
        )
        if len(run.grids) > 1:
            first, last = run.grids[0], run.grids[-1]
            pictures.append(
                '<div><h3>Before and after</h3><div class="pairs">'
                f'<figure><img class="pair" alt="before" src="{first.src}"><figcaption>before (step {first.step})</figcaption></figure>'
                f'<figure><img class="pair" alt="after" src="{last.src}"><figcaption>after (step {last.step})</figcaption></figure></div></div>'
            )
    if run.val_grids:
        pictures.append(
            _slider(
                index,
                "val_grids",
                "Validation samples",
                run.val_grids,
                "Held-out prompts with fixed seeds, scored by the validation rewards (train.validation).",
            )
        )
    parts = [f'<div class="pictures">{"".join(pictures)}</div>'] if pictures else []
    cmds = "\n".join(f"# {k}\n{v}" for k, v in run.commands.items())
    parts.append(f"<h3>Commands</h3><pre><code>{e(cmds)}</code></pre>")
    if run.card:
        parts.append(
            f'<h3>Model card <span class="note">(lora/README.md)</span></h3><div class="card">{markdown(run.card)}</div>'
        )
    parts.append(f'<h3>Config <span class="note">(config.yaml)</span></h3><pre><code>{e(run.config_text)}</code></pre>')
    body = "".join(parts)
    if several:
        return f'<details class="run" open><summary>{e(run.name)} <span class="note">{e(str(run.path))}</span></summary>{body}</details>'
    return f'<section><h2>Run</h2><p class="note">{e(str(run.path))}</p>{body}</section>'


def _slider(index: int, kind: str, heading: str, grids: list, note: str) -> str:
    """A grid image with a slider (and play button) over ``grids``, starting at the last one."""
    n = len(grids)
    return (
        f'<div><h3>{heading}</h3><div class="grids" data-run="{index}" data-kind="{kind}">'
        f'<div class="grid-controls"><button type="button" class="play">play</button>'
        f'<input type="range" min="0" max="{n - 1}" value="{n - 1}" step="1" aria-label="training step">'
        f'<span class="grid-step"></span></div><img class="grid" alt="{heading}" src="{grids[-1].src}">'
        f'<div class="note">{html.escape(note)}</div></div></div>'
    )


def markdown(text: str) -> str:
    """The small part of Markdown a model card uses: front matter, headings, tables, code, paragraphs."""
    e = html.escape
    lines = text.splitlines()
    if lines and lines[0].strip() == "---" and "---" in (s.strip() for s in lines[1:]):
        end = 1 + [s.strip() for s in lines[1:]].index("---")
        out = [f"<pre><code>{e(chr(10).join(lines[1:end]))}</code></pre>"]
        lines = lines[end + 1 :]
    else:
        out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append(f"<pre><code>{e(chr(10).join(lines[i + 1 : j]))}</code></pre>")
            i = j + 1
        elif m := re.match(r"(#{1,6})\s+(.*)", line):
            level = min(6, len(m.group(1)) + 2)  # below the page's own headings
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                    rows.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
                i += 1
            out.append(f"<table>{''.join(rows)}</table>")
        elif line.strip():
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("```", "#", "|")):
                para.append(lines[i])
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
        else:
            i += 1
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escaped text with `code` and **bold** (images and links are shown as their text)."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"!?\[([^\]]*)\]\(([^)]*)\)", r"\1", text)
