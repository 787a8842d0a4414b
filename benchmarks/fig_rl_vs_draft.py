"""The paper's headline comparison at toy scale (Section 4.1, Figure 3): DRaFT against the RL
baselines DDPO and GRPO, in reward queries and in wall-clock time, on ``digits``.

    python benchmarks/fig_rl_vs_draft.py [--quick] [--seeds 0 1] [--sampler-steps 10]
        [--draft-steps 30] [--rl-steps 50] [--batch 2] [--rl-batch 4] [--lr 1e-2] [--rl-lr 3e-2]
    python benchmarks/fig_rl_vs_draft.py --lr-sweep 3e-3 1e-2 3e-2     # how the two lrs were chosen

Two panels, every curve the mean over seeds of a fixed evaluation batch (the ten digit
prompts, fixed noise) sampled with the same deterministic DDIM, so all methods start
from the same base-model reward:

* differentiable reward (digit-classifier, target 8): DRaFT-1, DRaFT-LV (n = 2), ReFL
  (m scaled from 20 of 50 steps) with deterministic DDIM, against DDPO and GRPO
  (G = 4), which sample with DDIM eta = 1 (DDPO's sampler) and see reward values only;
* JPEG size: DDPO and GRPO trained on ``jpeg-size`` (the real encoder's file size,
  no gradient) against DRaFT-LV trained on ``jpeg-compressibility`` (kornia's
  differentiable codec), all judged by ``jpeg-size`` (−kB, quality 95).

Same LoRA rank and optimiser (AdamW, clip 1.0) for every method; each family has its own
learning rate, the best of a small sweep on seed 0 (``--lr-sweep``, reported in RESULTS.md):
1e-2 for DRaFT, 3e-2 for DDPO and GRPO (at 3e-3 DDPO hardly moves in its budget). DDPO and
GRPO get a larger budget of steps (they learn more slowly per step and each of their steps
costs more).
Reported: the best mean reward DDPO reaches within its budget, the reward queries (and
training seconds) DDPO needed to get there, and those DRaFT-LV needs to reach the same
reward (linear interpolation between evaluations); their ratios are the paper's
"> 200x fewer queries" figure at this scale. Writes results/rl_vs_draft.json and .png.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from toy import RESULTS, band, make_trainer, paper_scaled, settings, train_run, write_figure

EVAL_SAMPLER = "ddim eta=0"
JUDGE = {"name": "jpeg-size", "quality": 95}


def methods(a) -> dict[str, dict[str, dict]]:
    """panel -> method -> {estimator, reward, sampler, steps, batch} (reward None: the panel's)."""
    m = paper_scaled(20, a.sampler_steps)
    rl = {"sampler": {"eta": 1.0}, "steps": a.rl_steps, "lr": a.rl_lr}
    ddpo = {"estimator": {"name": "ddpo", "checkpoint": False}, "batch": a.rl_batch, **rl}
    # GRPO samples group_size images of each prompt: as many images per step as DDPO's batch.
    grpo = {
        "estimator": {"name": "grpo", "group_size": a.group_size, "checkpoint": False},
        "batch": max(1, a.rl_batch // a.group_size),
        **rl,
    }
    draft = {"steps": a.draft_steps, "batch": a.batch, "lr": a.lr}
    lv = {"estimator": {"name": "draft-lv", "n": 2}, **draft}
    return {
        "digit-classifier": {
            "DRaFT-1": {"estimator": {"name": "draft-k", "k": 1}, **draft},
            "DRaFT-LV n=2": lv,
            f"ReFL m={m}": {"estimator": {"name": "refl", "m": m}, **draft},
            "DDPO": ddpo,
            f"GRPO G={a.group_size}": grpo,
        },
        "jpeg-size": {
            "DRaFT-LV n=2 (on jpeg-compressibility)": {**lv, "reward": {"name": "jpeg-compressibility"}},
            "DDPO": ddpo,
            f"GRPO G={a.group_size}": grpo,
        },
    }


COLORS = {"DRaFT-1": "C0", "DRaFT-LV": "C1", "ReFL": "C2", "DDPO": "C3", "GRPO": "C4"}
PANEL_REWARD = {"digit-classifier": {"name": "digit-classifier", "target": 8}, "jpeg-size": JUDGE}


def run_method(spec: dict, panel: str, seed: int, a) -> dict:
    reward = spec.get("reward") or PANEL_REWARD[panel]
    raw = settings(
        spec["estimator"],
        seed,
        sampler_steps=a.sampler_steps,
        batch=spec["batch"],
        lr=spec["lr"],
        reward=reward,
        sampler=spec.get("sampler"),
    )
    eval_every = max(1, spec["steps"] // a.evals)
    judge = JUDGE if panel == "jpeg-size" else None
    eval_sampler = {"name": "ddim", "steps": a.sampler_steps, "guidance_scale": 7.5} if spec.get("sampler") else None
    return train_run(raw, spec["steps"], eval_every, judge=judge, eval_sampler=eval_sampler)


def curve(records: list[dict]) -> dict:
    """The mean curve over seeds, with the cumulative training seconds (evaluations excluded)."""
    out = band(records)
    seconds = []
    for r in records:
        cum = np.cumsum([0.0] + [row["seconds"] for row in r["steps"]])
        seconds.append([float(cum[e["step"]]) for e in r["evals"]])
    out["seconds"] = [float(np.mean(c)) for c in zip(*seconds)]
    if "reward_own" in records[0]["evals"][0]:
        out["mean_own_sampler"] = band(records, key="reward_own")["mean"]
    return out


def first_reaching(c: dict, target: float) -> dict:
    """Queries and seconds at which the mean curve first reaches ``target`` (linear interpolation)."""
    for i, value in enumerate(c["mean"]):
        if value >= target:
            if i == 0:
                return {"reached": True, "queries": 0.0, "seconds": 0.0}
            f = (target - c["mean"][i - 1]) / (value - c["mean"][i - 1])
            lerp = lambda key: c[key][i - 1] + f * (c[key][i] - c[key][i - 1])  # noqa: E731
            return {"reached": True, "queries": lerp("queries"), "seconds": lerp("seconds"), "step": lerp("step")}
    return {"reached": False, "queries": c["queries"][-1], "seconds": c["seconds"][-1], "step": c["step"][-1]}


def step_costs(specs: dict[str, dict], panel: str, a) -> dict[str, float]:
    """Median seconds of one training step of each method (seed 0), the methods interleaved round
    by round after a warm-up round, so that the machine's load falls on all of them alike."""
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, spec) in enumerate(specs.items()):
            raw = settings(
                spec["estimator"],
                0,
                sampler_steps=a.sampler_steps,
                batch=spec["batch"],
                lr=spec["lr"],
                reward=spec.get("reward") or PANEL_REWARD[panel],
                sampler=spec.get("sampler"),
            )
            trainers[name] = make_trainer(raw, Path(tmp) / f"m{i}")
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for r in range(a.cost_rounds + 1):
            for name, trainer in trainers.items():
                t0 = time.perf_counter()
                trainer.train_step()
                if r:
                    times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def compare(curves: dict, rl: str, draft: str, costs: dict[str, float] | None = None) -> dict:
    """DDPO's best mean reward within its budget, and how much sooner ``draft`` gets there.

    Two time ratios: from the runs' own step times (sequential runs, so load changes between
    them count), and from the training steps needed times the interleaved step costs."""
    ref, ours = curves[rl], curves[draft]
    best = int(np.argmax(ref["mean"]))
    target = ref["mean"][best]
    res = {
        "rl": rl,
        "draft": draft,
        "base": ref["mean"][0],
        "target": target,
        "rl_queries": ref["queries"][best],
        "rl_seconds": ref["seconds"][best],
        "rl_steps": ref["step"][best],
    }
    # The other way round: DRaFT's best level, and whether the RL method gets there in its budget
    # (if not, its whole budget bounds the ratio from below).
    top = int(np.argmax(ours["mean"]))
    back = first_reaching(ref, ours["mean"][top])
    res["at_draft_best"] = {
        "target": ours["mean"][top],
        "draft_queries": ours["queries"][top],
        "rl_reached": back["reached"],
        "rl_queries": back["queries"],
        "queries_ratio": back["queries"] / max(ours["queries"][top], 1e-9),
        "ratio_is_lower_bound": not back["reached"],
    }
    if best == 0:
        res.update(improved=False, note=f"{rl} never beat the base model within its budget: no target to reach")
        return res
    hit = first_reaching(ours, target)
    res.update(
        improved=True,
        draft_reached=hit["reached"],
        draft_queries=hit["queries"],
        draft_seconds=hit["seconds"],
        draft_steps=hit["step"],
    )
    # Not reached: the draft side's whole budget bounds its need from below, the ratios from above.
    res["queries_ratio"] = ref["queries"][best] / max(hit["queries"], 1e-9)
    res["seconds_ratio"] = ref["seconds"][best] / max(hit["seconds"], 1e-9)
    res["ratio_is_upper_bound"] = not hit["reached"]
    if costs:
        res["step_seconds"] = {rl: costs[rl], draft: costs[draft]}
        res["seconds_ratio_interleaved"] = ref["step"][best] * costs[rl] / max(hit["step"] * costs[draft], 1e-9)
    return res


def describe(cmp: dict) -> str:
    back = cmp["at_draft_best"]
    tail = f"; {cmp['draft']}'s best {back['target']:.3f} ({back['draft_queries']:.0f} queries): {cmp['rl']} " + (
        f"reaches it after {back['rl_queries']:.0f} ({back['queries_ratio']:.1f}x)"
        if back["rl_reached"]
        else f"not within {back['rl_queries']:.0f} queries (> {back['queries_ratio']:.1f}x)"
    )
    return _describe_target(cmp) + tail


def _describe_target(cmp: dict) -> str:
    if not cmp.get("improved"):
        return cmp["note"]
    head = f"{cmp['rl']}'s best {cmp['target']:.3f} after {cmp['rl_queries']:.0f} queries ({cmp['rl_seconds']:.0f} s); "
    if not cmp["draft_reached"]:
        return head + f"{cmp['draft']} does not reach it within its {cmp['draft_queries']:.0f} queries"
    text = (
        head + f"{cmp['draft']} reaches it after {cmp['draft_queries']:.0f} queries ({cmp['draft_seconds']:.0f} s): "
        f"{cmp['queries_ratio']:.1f}x fewer queries, {cmp['seconds_ratio']:.1f}x less training time"
    )
    if "seconds_ratio_interleaved" in cmp:
        text += f" ({cmp['seconds_ratio_interleaved']:.1f}x from interleaved step costs)"
    return text


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(result["curves"])
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 8), squeeze=False)
    for col, panel in enumerate(panels):
        for name, c in result["curves"][panel].items():
            for row, x in enumerate(("queries", "seconds")):
                ax = axes[row][col]
                color = next((col for prefix, col in COLORS.items() if name.startswith(prefix)), None)
                ax.plot(c[x], c["mean"], marker="o", ms=3, label=name, color=color)
                ax.fill_between(c[x], c["min"], c["max"], color=color, alpha=0.12)
        cmp = result["comparison"][panel]
        for row in range(2):
            ax = axes[row][col]
            if cmp.get("improved"):
                ax.axhline(cmp["target"], color="grey", ls=":", lw=1)
            ax.set_xscale("symlog", linthresh=10 if row == 0 else 1)
            ax.set_xlim(left=0)
            ax.grid(alpha=0.3)
            ax.set_ylabel("eval reward: log p(8 | image)" if panel == "digit-classifier" else "eval: −JPEG kB (q 95)")
        axes[0][col].set_title(f"{panel} (dotted: best DDPO reward)", fontsize=10)
        axes[0][col].set_xlabel("reward queries (every reward evaluation in training)")
        axes[1][col].set_xlabel("training seconds (evaluations excluded)")
        axes[0][col].legend(fontsize=7)
    s = result["settings"]
    fig.suptitle(
        f"digits, {s['sampler_steps']} steps, lr {s['lr']} (DRaFT) / {s['rl_lr']} (RL), {len(s['seeds'])} seeds; eval with "
        f"deterministic DDIM (line: mean, band: min-max)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def lr_sweep(a) -> dict:
    """Each method's eval rewards at each learning rate (first seed only): how the defaults of
    --lr and --rl-lr were chosen (the highest mean reward over the second half of the run; a
    single best evaluation would favour runs that spike and collapse). Writes <out>_lr_sweep.json."""
    import json

    table = methods(a)["digit-classifier"]
    names = [n for n in table if n.startswith(("DRaFT-LV", "DDPO"))]  # GRPO takes DDPO's (--rl-lr)
    rows = {}
    for name in names:
        for lr in a.lr_sweep:
            record = run_method({**table[name], "lr": lr}, "digit-classifier", a.seeds[0], a)
            rewards = [e["reward"] for e in record["evals"]]
            late = statistics.fmean(rewards[len(rewards) // 2 + 1 :])
            rows.setdefault(name, {})[f"{lr:g}"] = {
                "best": max(rewards),
                "final": rewards[-1],
                "base": rewards[0],
                "second_half_mean": late,
                "queries": record["evals"][-1]["queries"],
                "tag": record["tag"],
            }
            print(
                f"[lr sweep] {name:16s} lr {lr:g}: eval {rewards[0]:.2f} -> {rewards[-1]:.2f} (best {max(rewards):.2f}, "
                f"mean of the second half {late:.2f})"
            )
    chosen = {name: max(r, key=lambda lr: r[lr]["second_half_mean"]) for name, r in rows.items()}
    print(f"[lr sweep] highest mean reward over the second half of the run: {chosen}")
    out = {
        "settings": {
            "seed": a.seeds[0],
            "lrs": a.lr_sweep,
            "sampler_steps": a.sampler_steps,
            "draft_steps": a.draft_steps,
            "rl_steps": a.rl_steps,
        },
        "rows": rows,
        "chosen": chosen,
        "criterion": "highest mean eval reward over the evaluations in the second half of the run (not the single "
        "best evaluation, which rewards unstable runs that spike and collapse)",
    }
    Path(f"{a.out}_lr_sweep.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}_lr_sweep.json")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sampler-steps", type=int, default=10)
    ap.add_argument("--draft-steps", type=int, default=30, help="training steps of the DRaFT-family runs")
    ap.add_argument("--rl-steps", type=int, default=50, help="training steps of the DDPO and GRPO runs")
    ap.add_argument("--batch", type=int, default=2, help="images per step of the DRaFT-family runs")
    ap.add_argument(
        "--rl-batch",
        type=int,
        default=4,
        help="images per step of DDPO (its advantages need several) and GRPO (rl-batch / group-size prompts)",
    )
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-2, help="learning rate of the DRaFT-family runs")
    ap.add_argument("--rl-lr", type=float, default=3e-2, help="learning rate of the DDPO and GRPO runs")
    ap.add_argument(
        "--lr-sweep",
        type=float,
        nargs="+",
        default=None,
        metavar="LR",
        help="instead of the figure: DRaFT-LV and DDPO on digit-classifier at each LR (first seed)",
    )
    ap.add_argument("--evals", type=int, default=6, help="evaluations per run after the initial one")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--cost-rounds", type=int, default=3, help="interleaved rounds timing one step of each method")
    ap.add_argument("--panels", nargs="+", default=list(PANEL_REWARD), choices=list(PANEL_REWARD))
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 sampler steps, 2 training steps, 1 seed")
    ap.add_argument("--out", default=str(RESULTS / "rl_vs_draft"), help="path stem of the .json and .png")
    a = ap.parse_args(argv)
    if a.quick:
        a.sampler_steps, a.draft_steps, a.rl_steps, a.batch, a.rl_batch, a.group_size, a.evals, a.seeds = (
            2,
            2,
            2,
            1,
            2,
            2,
            1,
            a.seeds[:1],
        )
        a.cost_rounds = 1
    torch.set_num_threads(1)
    if a.lr_sweep:
        return lr_sweep(a)
    result = {
        "settings": {
            k: getattr(a, k)
            for k in (
                "sampler_steps",
                "draft_steps",
                "rl_steps",
                "batch",
                "rl_batch",
                "group_size",
                "lr",
                "rl_lr",
                "seeds",
                "evals",
            )
        }
        | {"eval_sampler": EVAL_SAMPLER, "judge": JUDGE, "rl_sampler": "ddim eta=1"},
        "curves": {},
        "comparison": {},
        "runs": {},
        "step_seconds": {},
    }
    table = methods(a)
    for panel in a.panels:
        result["curves"][panel], result["runs"][panel] = {}, {}
        for name, spec in table[panel].items():
            records = [run_method(spec, panel, s, a) for s in a.seeds]
            result["curves"][panel][name] = curve(records)
            result["runs"][panel][name] = [{"tag": r["tag"], "final_eval": r["evals"][-1]["reward"]} for r in records]
            c = result["curves"][panel][name]
            print(
                f"[{panel}] {name:40s} eval {c['mean'][0]:.3f} -> {c['mean'][-1]:.3f} (best {max(c['mean']):.3f}) "
                f"after {c['queries'][-1]:.0f} queries, {c['seconds'][-1]:.0f} s"
            )
        lv = next(n for n in table[panel] if n.startswith("DRaFT-LV"))
        grpo = next(n for n in table[panel] if n.startswith("GRPO"))
        costs = step_costs({n: table[panel][n] for n in ("DDPO", grpo, lv)}, panel, a)
        result["step_seconds"][panel] = costs
        print(
            f"[{panel}] seconds per training step, interleaved: " + ", ".join(f"{n} {t:.2f}" for n, t in costs.items())
        )
        result["comparison"][panel] = compare(result["curves"][panel], "DDPO", lv, costs)
        result["comparison"][panel + " (GRPO)"] = compare(result["curves"][panel], grpo, lv, costs)
        for key in (panel, panel + " (GRPO)"):
            print(f"[{key}] {describe(result['comparison'][key])}")
    write_figure(result, a.out, plot)
    return result


if __name__ == "__main__":
    main()
