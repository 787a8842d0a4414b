"""What a run report shows, read from a run folder: config, metric series, grids, model card, commands.

Everything is read from the files the runner writes (``config.yaml``, ``metrics.jsonl``,
``samples/step-*.png``, ``lora/README.md``), so a report can be rebuilt at any time, for a
finished, interrupted or running run. Images become ``data:`` URIs so that the page needs
no other file: large ones are downscaled and stored as JPEG, and a run with very many grids
keeps an even selection of them (always the first and the last).
"""

from __future__ import annotations

import base64
import io
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from draft_core.config.schema import Config
from draft_core.errors import DraftError
from draft_core.rewarding.spec import reward_label
from draft_core.rundir import RunDir

MAX_SIDE = 1600  # grids wider or taller than this are downscaled for the page
MAX_GRIDS = 48  # at most this many grids per run on the slider
# Per-step fields that are bookkeeping rather than something to plot.
_NOT_PLOTTED = {"step", "skipped", "reason"}


@dataclass
class Grid:
    step: int
    src: str  # a data: URI


@dataclass
class Series:
    """One per-step metric: its steps and values (None: a gap, such as a skipped step)."""

    x: list[int]
    y: list[float | None]

    def finite(self) -> list[float]:
        return [v for v in self.y if v is not None]


@dataclass
class RunData:
    """One run folder, as the page shows it."""

    path: Path
    name: str
    config: Config
    config_text: str  # config.yaml as written
    steps: list[int]  # the step of every metrics row
    series: dict[str, Series]  # metric -> its points
    grids: list[Grid]  # samples/step-*.png
    val_grids: list[Grid]  # samples/val-step-*.png (validation)
    grid_prompts: list[str]
    card: str  # lora/README.md, markdown ("" when there is none yet)
    commands: dict[str, str] = field(default_factory=dict)
    guard_stop: tuple[int, str] | None = None  # (step, reason) when train.stop_when stopped the run
    best_step: int | None = None  # the validation step whose LoRA is lora/best/

    @property
    def planned_steps(self) -> int | None:
        return self.config.train.steps

    @property
    def last_step(self) -> int:
        return self.steps[-1] if self.steps else 0

    def title(self) -> str:
        reward_name = reward_label(self.config.reward) if self.config.reward else "?"
        estimator = self.config.estimator.get("name", "?")
        model = self.config.model.name
        return f"{estimator} on {reward_name} ({model})"


def check_run_dir(path: str | Path) -> RunDir:
    """The run folder, or a one-paragraph error naming what is missing."""
    p = RunDir(path)
    if not p.path.is_dir():
        raise DraftError(
            f"'{path}' is not a folder; give a run folder written by `draft train` (it holds config.yaml and metrics.jsonl)."
        )
    if not p.has_config():
        raise DraftError(
            f"'{path}' has no config.yaml, so it is not a run folder written by `draft train`; give the folder passed to --out (or printed when the run started)."
        )
    return p


def read_run(path: str | Path, name: str | None = None, pending: dict | None = None) -> RunData:
    """pending: a row not in metrics.jsonl yet, merged into that step's row or added after the last."""
    from draft_core.media import read_metrics

    run_dir = check_run_dir(path)
    path = run_dir.path
    config_text = run_dir.config.read_text()
    config = run_dir.read_config()
    rows = read_metrics(run_dir.metrics)
    if pending:
        same = [r for r in rows if r.get("step") == pending["step"]]
        if same:
            same[-1].update(pending)
        elif not rows or rows[-1]["step"] < pending["step"]:
            rows.append(dict(pending))
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in _NOT_PLOTTED and k not in keys and _number(v) is not None]
    # A row without the key (a validation metric between validation steps) is no point; a row
    # with a null or non-finite value (a skipped step) is a gap in the line.
    series = {
        k: Series([int(r["step"]) for r in rows if k in r], [_number(r[k]) for r in rows if k in r]) for k in keys
    }
    card = run_dir.lora / "README.md"
    run = RunData(
        path=path,
        name=name or path.name,
        config=config,
        config_text=config_text,
        steps=[int(r["step"]) for r in rows],
        series=series,
        grids=read_grids(run_dir.samples),
        val_grids=read_grids(run_dir.samples, "val-step-"),
        grid_prompts=_grid_prompts(config),
        card=card.read_text() if card.is_file() else "",
    )
    run.commands = commands(run)
    stops = [(int(r["step"]), str(r["guard_stop"])) for r in rows if r.get("guard_stop")]
    run.guard_stop = stops[-1] if stops else None
    run.best_step = next((int(r["step"]) for r in reversed(rows) if r.get("guard_best")), None)
    return run


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_grids(folder: Path, prefix: str = "step-") -> list[Grid]:
    """The grids ``folder/<prefix>NNNNNN.png`` in step order (at most MAX_GRIDS)."""
    name = re.compile(re.escape(prefix) + r"(\d+)\.png")
    found = sorted((int(m.group(1)), p) for p in folder.glob(f"{prefix}*.png") if (m := name.fullmatch(p.name)))
    if len(found) > MAX_GRIDS:  # an even selection, the first and the last always kept
        idx = sorted({round(i * (len(found) - 1) / (MAX_GRIDS - 1)) for i in range(MAX_GRIDS)})
        found = [found[i] for i in idx]
    return [Grid(step, image_uri(p)) for step, p in found]


def image_uri(path: Path, max_side: int = MAX_SIDE) -> str:
    """A ``data:`` URI of the image: the PNG as it is, or a downscaled JPEG when it is large."""
    data = path.read_bytes()
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= max_side:
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _grid_prompts(config: Config) -> list[str]:
    """The grid's column prompts: train.sample_prompts, or the first ten training prompts."""
    if config.train.sample_prompts:
        return list(config.train.sample_prompts)
    prompts = config.prompts
    try:
        from draft_core.config.prompts import load_prompts

        return load_prompts(prompts.source, prompts.items, prompts.template)[:10]
    except (DraftError, OSError, KeyError, IndexError, ValueError):  # a prompt file that moved since
        return []


def commands(run: RunData) -> dict[str, str]:
    """The commands a reader of the page wants next: resume, extend, sample, share."""
    d = shlex.quote(str(run.path))
    from draft_core.lora.card import sample_command

    model = run.config.model.name
    prompt = shlex.quote(run.grid_prompts[0] if run.grid_prompts else "PROMPT")
    steps = run.planned_steps or run.last_step
    # With the steps and guidance the run sampled with (draft sample also reads them from the run's config.yaml).
    sample = sample_command(model, f"{run.path}/lora", run.config.sampler, prompt=prompt)
    return {
        "resume": f"draft train --resume {d}",
        "extend": f"draft train --resume {d} --set train.steps={2 * steps}",
        "sample": f"{sample} --n 8 --seed 0 --out {d}/lora-samples",
        "report": f"draft report {d}",
        "push": f"draft lora push {d} --repo USER/NAME",
    }
