"""The effect of K at toy scale (paper Figures 8, 9 and 25), on ``digits``.

    python benchmarks/fig_k_effect.py [--sampler-steps 10] [--ks 1 2 3 5 10] [--batches 4]
        [--train-ks 1 2 5 10] [--train-steps 30] [--seeds 0 1 2]

1. Gradient norm against K (Figure 8) and the angle between the DRaFT-1 gradient and the
   DRaFT-K gradient (Figure 25): for each of ``--batches`` batches (fixed prompts and
   noise; DDIM with eta = 0, so every K sees the same sampling chain) the LoRA gradient of
   DRaFT-K for each K, at two points: the LoRA at initialisation (B = 0, so only B has a
   gradient) and a trained LoRA (the DRaFT-LV seed-0 run of fig_sample_efficiency.py,
   trained here if it is not cached).
2. Final reward against K (Figure 9): runs with the same settings as
   fig_sample_efficiency.py (shared through the run cache), final evaluation reward.
Writes results/k_effect.json and .png.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from toy import RESULTS, add_training_args, common_settings, make_trainer, runs_dir, settings, train_run, write_figure

from draft_core.lora import load_lora_state
from draft_core.models.digits.data import PROMPTS
from draft_core.plugins import load_registry
from draft_core.plugins.protocols import StepInputs


def estimator_for(k: int, steps: int) -> dict:
    # K = T is full DRaFT; the same computation as draft-k k=T, and the same cached run.
    return {"name": "draft"} if k == steps else {"name": "draft-k", "k": k}


def gradient_probe(trainer, ks: list[int], batches: int, batch: int) -> dict:
    registry = load_registry()
    model, sampler, reward = trainer.model, trainer.c.sampler, trainer.c.reward
    params = trainer.params
    norms = {k: [] for k in ks}
    angles = {k: [] for k in ks}
    for b in range(batches):
        prompts = [PROMPTS[(b * batch + i) % len(PROMPTS)] for i in range(batch)]
        cond = model.encode_prompts(prompts)
        noise = model.make_noise(batch, torch.Generator().manual_seed(10_000 + b))
        flats = {}
        for k in ks:
            est = registry.build("estimator", "draft-k", k=k)
            out = est(StepInputs(model, sampler, reward, cond, noise, torch.Generator().manual_seed(b)))
            grads = torch.autograd.grad(out.loss, params, allow_unused=True)
            flats[k] = torch.cat(
                [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]
            )
            norms[k].append(flats[k].norm().item())
        ref = flats[ks[0]]
        for k in ks:
            cos = torch.nn.functional.cosine_similarity(ref, flats[k], dim=0).clamp(-1, 1).item()
            angles[k].append(math.degrees(math.acos(cos)))
    return {
        "k": ks,
        "grad_norm": {k: norms[k] for k in ks},
        "angle_to_k1_deg": {k: angles[k] for k in ks},
        "grad_norm_mean": [statistics.fmean(norms[k]) for k in ks],
        "angle_mean": [statistics.fmean(angles[k]) for k in ks],
    }


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for point, probe in result["gradients"].items():
        axes[0].plot(probe["k"], probe["grad_norm_mean"], marker="o", label=f"LoRA at {point}")
        axes[1].plot(probe["k"], probe["angle_mean"], marker="o", label=f"LoRA at {point}")
    axes[0].set(
        xlabel="K", ylabel="gradient norm (mean over batches)", yscale="log", title="Fig. 8: gradient norm vs K"
    )
    axes[1].set(xlabel="K", ylabel="angle to the DRaFT-1 gradient (degrees)", title="Fig. 25: angle vs K")
    f = result["final_reward"]
    if f["k"]:
        axes[2].errorbar(
            f["k"],
            f["mean"],
            yerr=[[m - lo for m, lo in zip(f["mean"], f["min"])], [hi - m for m, hi in zip(f["mean"], f["max"])]],
            marker="o",
            capsize=3,
        )
    axes[2].set(
        xlabel="K", ylabel="final eval reward: log p(8 | image)", title="Fig. 9: final reward vs K (min-max over seeds)"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"digits, {result['settings']['sampler_steps']} DDIM steps", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_args(ap)
    ap.add_argument(
        "--ks", type=int, nargs="+", default=[1, 2, 3, 5, 10], help="K for the gradient probes (first = reference)"
    )
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--train-ks", type=int, nargs="*", default=[1, 2, 5, 10], help="K for the final-reward runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(RESULTS / "k_effect"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    common = common_settings(a)
    result: dict = {
        "settings": {
            **common,
            "ks": a.ks,
            "batches": a.batches,
            "train_ks": a.train_ks,
            "train_steps": a.train_steps,
            "seeds": a.seeds,
        },
        "gradients": {},
    }
    trainer = make_trainer(
        settings({"name": "draft-k", "k": 1}, 0, **common), runs_dir() / f"k_probe_T{a.sampler_steps}"
    )
    result["gradients"]["init"] = gradient_probe(trainer, a.ks, a.batches, a.batch)
    trained = train_run(settings({"name": "draft-lv", "n": 2}, a.seeds[0], **common), a.train_steps, a.eval_every)
    load_lora_state(trainer.model, torch.load(runs_dir() / trained["tag"] / "lora_state.pt", weights_only=True))
    result["gradients"]["trained (DRaFT-LV run)"] = gradient_probe(trainer, a.ks, a.batches, a.batch)
    for point, g in result["gradients"].items():
        print(
            f"LoRA at {point}: "
            + ", ".join(
                f"K={k}: |g| {n:.3g}, angle {ang:.0f} deg"
                for k, n, ang in zip(g["k"], g["grad_norm_mean"], g["angle_mean"])
            )
        )
    final = {"k": [], "mean": [], "min": [], "max": [], "per_seed": {}}
    for k in a.train_ks:
        records = [
            train_run(settings(estimator_for(k, a.sampler_steps), s, **common), a.train_steps, a.eval_every)
            for s in a.seeds
        ]
        values = [r["evals"][-1]["reward"] for r in records]
        final["k"].append(k)
        final["mean"].append(statistics.fmean(values))
        final["min"].append(min(values))
        final["max"].append(max(values))
        final["per_seed"][k] = values
        print(f"K={k}: final eval reward {statistics.fmean(values):.2f} (seeds {min(values):.2f}..{max(values):.2f})")
    result["final_reward"] = final
    write_figure(result, a.out, plot)
    return result


if __name__ == "__main__":
    main()
