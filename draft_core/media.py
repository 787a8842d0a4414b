"""What a person looks at: image grids and the reward curve.

Grids carry their labels on the image (row and column labels, a title), drawn with Pillow's
built-in default font so no font file is needed; small images are enlarged by an integer
factor (nearest neighbour, every pixel kept) so the labels stay legible. Every PNG written
here can carry its generation parameters as PNG text: ``parameters`` in the A1111 layout
(prompt line, then ``Steps: 20, Sampler: ddim, CFG scale: 7.5, Seed: 0, ...``) that image
viewers and sites read, and ``draft`` with the same facts as JSON, plus the grid's layout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

MIN_CELL = 64  # enlarge labelled grids' cells to at least this many pixels
PAD = 2  # pixels between cells (torchvision's make_grid padding)
MAX_LABEL = 320  # widest row-label band, in pixels


def save_grid(
    images: torch.Tensor,
    path: Path,
    nrow: int,
    *,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    title: str | None = None,
    params: dict[str, Any] | None = None,
) -> Path:
    """images: [N, 3, H, W] in [0, 1] -> one PNG, nrow images per row.

    ``rows``/``cols``: a label per grid row / column, drawn beside / above it; ``title``: a line
    above everything; ``params``: generation parameters stored in the PNG (``generation_params``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    images = images.detach().float().cpu()
    if rows is None and cols is None and title is None and params is None:
        save_image(make_grid(images, nrow=nrow, padding=PAD, pad_value=1.0), path)
        return path
    image, layout = labelled_grid(images, nrow, rows, cols, title)
    return save_png(image, path, params, layout)


def to_pil(images: torch.Tensor):
    """[3, H, W] in [0, 1] -> a PIL RGB image (rounded as torchvision's save_image rounds)."""
    from PIL import Image

    array = images.detach().float().cpu().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def _font():
    from PIL import ImageFont

    return ImageFont.load_default_imagefont()  # the bitmap font built into Pillow


def _latin(text: str) -> str:
    """The bitmap font has Latin-1 glyphs only: other characters show as '?'."""
    return str(text).encode("latin-1", "replace").decode("latin-1")


def _fit(draw, text: str, width: float, font, lines: int = 1) -> list[str]:
    """``text`` word-wrapped into at most ``lines`` lines of ``width`` pixels; the last one cut with '...'."""
    out: list[str] = []
    words = _latin(text).split()
    while words and len(out) < lines:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
            line += " " + words.pop(0)
        out.append(line)
    if words or (out and draw.textlength(out[-1], font=font) > width):
        last = f"{out[-1]} {' '.join(words)}".strip() if out else ""
        while last and draw.textlength(last + "...", font=font) > width:
            last = last[:-1]
        out[-1:] = [last.rstrip() + "..."]
    return out or [""]


def common_prefix(labels: Sequence[str]) -> str:
    """The words every label starts with, when each label has words beyond them ("a handwritten digit ")."""
    split = [label.split() for label in labels]
    if len(split) < 2:
        return ""
    n = 0
    while all(len(s) > n + 1 for s in split) and len({s[n] for s in split}) == 1:
        n += 1
    return " ".join(split[0][:n]) + " " if n else ""


def labelled_grid(images: torch.Tensor, nrow: int, rows=None, cols=None, title: str | None = None):
    """The grid of ``images`` ([N, 3, H, W] in [0, 1]) with its labels -> (PIL image, layout).

    layout: ``left``/``top`` (label bands, in pixels; ``title``: the title's part of ``top``), ``scale`` (cell enlargement), ``cell``
    ([h, w] after it) and ``pad``; enough to cut the grid body back out (``save_before_after``).
    """
    from PIL import Image, ImageDraw

    h, w = images.shape[-2:]
    scale = max(1, math.ceil(MIN_CELL / min(h, w)))
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    body = to_pil(make_grid(images, nrow=nrow, padding=PAD, pad_value=1.0))
    font = _font()
    draw = ImageDraw.Draw(body)
    line = font.getbbox("Ag")[3] + 3
    cell_w, cell_h = w * scale, h * scale
    rows, cols = [_latin(r) for r in rows or []], [_latin(c) for c in cols or []]
    prefix = common_prefix(cols) if cols else ""
    if prefix and draw.textlength(max(cols, key=len), font=font) > cell_w:
        cols = [c[len(prefix) :] for c in cols]  # "a handwritten digit zero" -> "zero", the rest in the title
        title = f"{title}; " if title else ""
        title += f"prompts: {prefix}..."
    col_lines = [_fit(draw, c, cell_w, font, lines=3) for c in cols]
    left = min(MAX_LABEL, max((int(draw.textlength(r, font=font)) for r in rows), default=-8) + 8)
    title_lines = _fit(draw, title, left + body.width - 8, font, lines=3) if title else []
    title_band = line * len(title_lines) + 4 if title else 0
    top = title_band + (line * max(map(len, col_lines)) + 4 if col_lines else 0)
    canvas = Image.new("RGB", (left + body.width, top + body.height), "white")
    canvas.paste(body, (left, top))
    draw = ImageDraw.Draw(canvas)
    for k, piece in enumerate(title_lines):
        draw.text((4, 2 + k * line), piece, fill="black", font=font)
    for j, text in enumerate(col_lines):
        x = left + PAD + j * (cell_w + PAD)
        for k, piece in enumerate(text):
            y = top - line * (len(text) - k) - 2
            draw.text((x + (cell_w - draw.textlength(piece, font=font)) / 2, y), piece, fill="black", font=font)
    for i, text in enumerate(rows):
        pieces = _fit(draw, text, left - 8, font, lines=max(1, (cell_h - 2) // line))
        y = top + PAD + i * (cell_h + PAD) + (cell_h - line * len(pieces)) / 2
        for k, piece in enumerate(pieces):
            draw.text((4, y + k * line), piece, fill="black", font=font)
    return canvas, {"left": left, "top": top, "title": title_band, "scale": scale, "cell": [cell_h, cell_w], "pad": PAD}


# -- generation parameters in PNG text -------------------------------------------------


def generation_params(
    prompts: str | Sequence[str],
    *,
    model: str,
    sampler: str,
    steps: int,
    guidance: float,
    seed: int | None,
    size: Sequence[int] | None = None,
    loras: Sequence[tuple[str, float]] = (),
    **extra: Any,
) -> dict[str, Any]:
    """What made an image (or a grid): enough to generate it again with ``draft sample``."""
    out = {
        "prompt": prompts if isinstance(prompts, str) else list(dict.fromkeys(prompts)),
        "model": model,
        "sampler": sampler,
        "steps": None if steps is None else int(steps),
        "guidance": None if guidance is None else float(guidance),
        "seed": seed,
        "loras": [{"path": str(p), "scale": float(s)} for p, s in loras],
    }
    if size is not None:
        out["size"] = [int(v) for v in size]
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def parameters_text(params: dict[str, Any]) -> str:
    """The A1111 ``parameters`` text: the prompt (LoRAs as ``<lora:path:scale>``), then one settings line."""
    prompt = params["prompt"] if isinstance(params["prompt"], str) else " | ".join(params["prompt"])
    prompt += "".join(f" <lora:{lora['path']}:{lora['scale']:g}>" for lora in params.get("loras", []))
    guidance = params.get("guidance")
    fields = {
        "Steps": params.get("steps"),
        "Sampler": params.get("sampler"),
        "CFG scale": None if guidance is None else f"{guidance:g}",
        "Seed": params.get("seed"),
    }
    if "size" in params:
        fields["Size"] = "x".join(str(v) for v in reversed(params["size"]))  # A1111 writes width x height
    fields["Model"] = params.get("model")
    skip = {"prompt", "loras", "steps", "sampler", "guidance", "seed", "size", "model"}
    fields.update({k.replace("_", " ").capitalize(): v for k, v in params.items() if k not in skip})
    settings = ", ".join(
        f"{k}: {v if not isinstance(v, (list, dict)) else json.dumps(v)}" for k, v in fields.items() if v is not None
    )
    return f"{prompt}\n{settings}, Software: draft"


def save_png(image, path: Path, params: dict[str, Any] | None = None, layout: dict[str, Any] | None = None) -> Path:
    """Write a PIL image as PNG with ``parameters`` (A1111 text) and ``draft`` (JSON) text chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if params is not None:
        info.add_text("parameters", parameters_text(params))
    info.add_text("draft", json.dumps({**(params or {}), **({"layout": layout} if layout else {})}))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=info)
    return path


def read_png_info(path: Path) -> dict[str, Any]:
    """The ``draft`` JSON a PNG carries ({} when it has none)."""
    from PIL import Image

    with Image.open(path) as im:
        text = im.text.get("draft") if hasattr(im, "text") else None
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def save_before_after(before: Path, after: Path, path: Path, labels: tuple[str, str] = ("before", "after")) -> Path:
    """Two grids side by side, before on the left (``save_side_by_side`` of the two)."""
    return save_side_by_side([before, after], path, labels)


def save_side_by_side(grids: Sequence[Path], path: Path, labels: Sequence[str]) -> Path:
    """Grids side by side, left to right, each under its heading in ``labels``; labelled grids share
    one row-label band (the first's) and keep their column labels (the cells are cut from the PNGs,
    pixel for pixel). The generation parameters are the last grid's."""
    from PIL import Image, ImageDraw

    if len(grids) != len(labels) or not grids:
        raise ValueError(f"save_side_by_side needs one label per grid, got {len(grids)} grids, {len(labels)} labels")
    images = [Image.open(g).convert("RGB") for g in grids]
    infos = [read_png_info(g) for g in grids]
    layouts = [info.get("layout") for info in infos]
    params = {k: v for k, v in infos[-1].items() if k != "layout"} if "prompt" in infos[-1] else None
    gap = 8
    if not all(layouts):
        canvas = Image.new(
            "RGB", (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)), "white"
        )
        x = 0
        for image in images:
            canvas.paste(image, (x, 0))
            x += image.width + gap
        return save_png(canvas, path, params)
    font = _font()
    line = font.getbbox("Ag")[3] + 3
    bodies = [i.crop((la["left"], la["top"], i.width, i.height)) for i, la in zip(images, layouts)]
    bands = [i.crop((la["left"], la["title"], i.width, la["top"])) for i, la in zip(images, layouts)]  # column labels
    first, la = images[0], layouts[0]
    row_labels = first.crop((0, la["top"], la["left"], first.height))  # once
    top = line + 4 + max(b.height for b in bands)
    width = la["left"] + sum(b.width for b in bodies) + gap * (len(bodies) - 1)
    canvas = Image.new("RGB", (width, top + max(b.height for b in bodies)), "white")
    canvas.paste(row_labels, (0, top))
    draw = ImageDraw.Draw(canvas)
    x = la["left"]
    for body, band, text in zip(bodies, bands, labels):
        canvas.paste(body, (x, top))
        canvas.paste(band, (x, top - band.height))
        draw.text((x + (body.width - draw.textlength(text, font=font)) / 2, 2), text, fill="black", font=font)
        x += body.width + gap
    return save_png(canvas, path, params, {**la, "top": top, "title": line + 4})


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_reward_curve(metrics_path: Path, out: Path, title: str = "") -> Path | None:
    """Reward mean ± std per step, with a moving average; None when there is nothing to plot."""
    rows = [
        r for r in read_metrics(metrics_path) if isinstance(r.get("reward_mean"), (int, float))
    ]  # not skipped steps
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([r["step"] for r in rows])
    mean = np.array([r["reward_mean"] for r in rows])
    std = np.array([r.get("reward_std", 0.0) for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, mean, lw=0.8, alpha=0.6, label="reward (batch mean)")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
    window = max(1, len(rows) // 20)
    if window > 1:
        smooth = np.convolve(mean, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=2, label=f"moving average ({window})")
    ax.set_xlabel("training step")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
