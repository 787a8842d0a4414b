"""Sample efficiency at toy scale (paper Figure 3): reward against reward queries, on ``digits``.

    python benchmarks/fig_sample_efficiency.py [--sampler-steps 10] [--train-steps 30] [--batch 2]
        [--lr 3e-3] [--seeds 0 1 2] [--eval-every 5]

DRaFT-1, DRaFT-LV (n = 2), ReFL, DRaFT-K with the paper's K = 10 of 50 steps and full
DRaFT, on the same reward (digit-classifier, target 8: "make every digit read as an
eight", the paper's adversarial experiment in miniature), prompts, learning rate and
seeds. K and ReFL's m scale with the sampler's steps (K = 10, m = 20 at 50 steps). The
curve is the reward of a fixed evaluation batch (toy.py); reward queries count every
reward evaluation of training, as the runner logs them (DRaFT-LV: n + 1 per image).
Writes results/sample_efficiency.json and .png.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from toy import RESULTS, add_training_args, band, common_settings, paper_scaled, settings, train_run, write_figure


def methods(steps: int) -> dict[str, dict]:
    k, m = paper_scaled(10, steps), paper_scaled(20, steps)
    return {
        "DRaFT-1": {"name": "draft-k", "k": 1},
        "DRaFT-LV n=2": {"name": "draft-lv", "n": 2},
        f"ReFL m={m}": {"name": "refl", "m": m},
        f"DRaFT-K K={k}": {"name": "draft-k", "k": k},
        f"DRaFT full (K={steps})": {"name": "draft"},
    }


def at_common_queries(curves: dict) -> dict:
    """Each method's mean eval reward, linearly interpolated at the largest query count all reached."""
    q = min(c["queries"][-1] for c in curves.values())
    return {"queries": q, "reward": {name: float(np.interp(q, c["queries"], c["mean"])) for name, c in curves.items()}}


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, b in result["curves"].items():
        for ax, x in zip(axes, ("queries", "step")):
            (line,) = ax.plot(b[x], b["mean"], marker="o", ms=3, label=name)
            ax.fill_between(b[x], b["min"], b["max"], color=line.get_color(), alpha=0.15)
    s = result["settings"]
    axes[0].set_xlabel("reward queries (every reward evaluation in training)")
    axes[1].set_xlabel("training steps")
    for ax in axes:
        ax.set_ylabel("eval reward: log p(8 | image)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"digits, {s['sampler_steps']} DDIM steps, batch {s['batch']}, lr {s['lr']}, "
        f"{len(s['seeds'])} seeds (line: mean, band: min-max)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_args(ap)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", default=None, help="a subset of the method names")
    ap.add_argument("--out", default=str(RESULTS / "sample_efficiency"), help="path stem of the .json and .png")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = {
        "settings": {
            "sampler_steps": a.sampler_steps,
            "train_steps": a.train_steps,
            "batch": a.batch,
            "lr": a.lr,
            "seeds": a.seeds,
            "eval_every": a.eval_every,
            "reward": "digit-classifier target 8",
        },
        "curves": {},
        "runs": {},
    }
    for name, est in methods(a.sampler_steps).items():
        if a.only and name not in a.only:
            continue
        records = [train_run(settings(est, s, **common_settings(a)), a.train_steps, a.eval_every) for s in a.seeds]
        result["curves"][name] = band(records)
        result["runs"][name] = [
            {"tag": r["tag"], "train_seconds": r["train_seconds"], "final_eval": r["evals"][-1]["reward"]}
            for r in records
        ]
        c = result["curves"][name]
        print(
            f"{name:22s} eval reward {c['mean'][0]:.2f} -> {c['mean'][-1]:.2f} "
            f"(seeds {c['min'][-1]:.2f}..{c['max'][-1]:.2f}) after {c['queries'][-1]:.0f} queries"
        )
    result["at_common_queries"] = at_common_queries(result["curves"])
    print(
        f"eval reward at {result['at_common_queries']['queries']:.0f} reward queries (interpolated): "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["at_common_queries"]["reward"].items())
    )
    write_figure(result, a.out, plot)
    return result


if __name__ == "__main__":
    main()
