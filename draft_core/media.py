"""What a person looks at: image grids and the reward curve."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def save_grid(images: torch.Tensor, path: Path, nrow: int) -> Path:
    """images: [N, 3, H, W] in [0, 1] -> one PNG, nrow images per row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0), path)
    return path


def save_before_after(before: Path, after: Path, path: Path) -> Path:
    """Two grids side by side (same size), before on the left."""
    from PIL import Image

    a, b = Image.open(before).convert("RGB"), Image.open(after).convert("RGB")
    gap = 8
    canvas = Image.new("RGB", (a.width + b.width + gap, max(a.height, b.height)), "white")
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + gap, 0))
    canvas.save(path)
    return path


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_reward_curve(metrics_path: Path, out: Path, title: str = "") -> Path | None:
    """Reward mean ± std per step, with a moving average; None when there is nothing to plot."""
    rows = [r for r in read_metrics(metrics_path) if isinstance(r.get("reward_mean"), (int, float))]  # not skipped steps
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
