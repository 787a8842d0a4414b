"""One leaderboard of every registered gradient estimator, on ``digits`` and ``digits-flow``.

    python benchmarks/leaderboard.py [--quick] [--models digits digits-flow] [--tasks classifier jpeg]
        [--sampler-steps 4] [--budget 24] [--lrs 3e-3 1e-2 3e-2] [--seeds 0 1 2] [--out STEM]

The estimators are read from the registry (``kl``, a wrapper, is not one), so one a plugin
registers joins the table by itself; AlignProp's random truncation (``draft-k`` with
``alignprop_range``) and GRPO-Guard (``guard: true`` of an estimator that takes it) are rows of
their own. Each runs with its defaults except the sizes
in ``estimator_section`` (K, m, G and the like scaled to the short chain). Two tasks:

* ``classifier``: the differentiable ``digit-classifier`` reward, target 8 (the paper's
  adversarial task in miniature: make every digit read as an eight);
* ``jpeg``: ``jpeg-size`` (the real encoder's file size, no gradient). The ``ocr`` reward was
  tried first (prompt "a handwritten digit three", target "3"): it reads ``digits``' threes as
  "3" in every sample (reward 1.0 before training) and none of ``digits-flow``'s (0.0), so
  there is nothing to learn on either model.

An estimator that does not apply (a gradient method on a reward without gradients, a policy
gradient without a stochastic sampler) is skipped with its own error message. Every estimator
is tried with the model's deterministic sampler (``ddim``, ``euler``) and its stochastic one
(``ddim`` eta 1, ``flow-sde``), the stochastic one first for those that declare
``needs_reward_gradient = False``; the first it accepts is used.

Protocol per (model, task, estimator): a learning-rate sweep on the first seed, the best rate
being the highest mean evaluation reward over the second half of the run, then the other seeds
at that rate. Each run trains until it has spent ``--budget`` reward queries (as the runner
counts them). The evaluation (``--evals`` times per run) samples the training prompts and the
held-out prompts (seven and nine, never trained on) with fixed noise and the model's
deterministic sampler, scored by the task's reward, so every curve starts from the same base
model. Reported per estimator (mean over seeds): reward queries and seconds to a common target
(the base plus half the largest gain any estimator reaches; seconds = training steps times the
step cost measured with all estimators interleaved in one process), the best evaluation reward
within the budget, the held-out reward at the end, and how many of the final samples (every
prompt, ``--judge-n`` each) the independent SVC judge (digits_quality.py) reads as the prompted
digit, and as an eight. Writes STEM.json, STEM_<task>.png and prints markdown tables.

The default sizes are for 2 CPU cores shared with other work, the whole board within 40 minutes:
4 sampler steps, 16 reward queries per run (8 steps of DRaFT-1 at 2 images, 4 of DDPO or GRPO at
4), two learning rates a decade apart, 3 seeds, 3 evaluations, 20 judged samples: some 130 runs
of a few seconds of CPU each. Several processes can share the work (``--models``, ``--tasks``,
``--only``; ``--combine`` joins their JSON files, step costs then interleaved within each process).
At this size the board ranks how fast each estimator moves the reward at the start of training;
it says nothing about where they end up after thousands of steps.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from toy import RESULTS, machine, make_trainer, paper_scaled

from draft_core.errors import DraftError
from draft_core.models.digits.data import PROMPTS, fit_reference_svc, to_sklearn_pixels
from draft_core.models.digits_flow import DEFAULT_GUIDANCE as FLOW_GUIDANCE
from draft_core.plugins import load_registry

WRAPPERS = {"kl"}  # registered estimators that wrap another one, not estimators of their own
HELD_OUT = (7, 9)
TRAIN_PROMPTS = [p for i, p in enumerate(PROMPTS) if i not in HELD_OUT]
HELD_OUT_PROMPTS = [PROMPTS[i] for i in HELD_OUT]
MODELS = {
    "digits": {"guidance_scale": 7.5, "samplers": ({"name": "ddim"}, {"name": "ddim", "eta": 1.0})},
    "digits-flow": {"guidance_scale": FLOW_GUIDANCE, "samplers": ({"name": "euler"}, {"name": "flow-sde"})},
}
TASKS = {
    "classifier": {"reward": {"name": "digit-classifier", "target": 8}, "label": "eval reward: log p(8 | image)"},
    "jpeg": {"reward": {"name": "jpeg-size", "quality": 95}, "label": "eval reward: -JPEG kB (q 95)"},
}


def estimator_rows(steps: int, group_size: int) -> dict[str, dict]:
    """Row label -> estimator section, for every registered estimator (and AlignProp's truncation)."""
    registry = load_registry()
    rows: dict[str, dict] = {}
    for name in registry.names("estimator"):
        if name in WRAPPERS:
            continue
        rows[name] = estimator_section(name, registry.get("estimator", name).factory, steps, group_size)
        if name == "draft-k":
            rows["alignprop"] = {"name": "draft-k", "k": None, "alignprop_range": [0, steps]}
        if "guard" in inspect.signature(registry.get("estimator", name).factory).parameters:
            rows[f"{name} guard"] = {**rows[name], "guard": True}  # GRPO-Guard, an option of the estimator
    return rows


def estimator_section(name: str, factory, steps: int, group_size: int) -> dict:
    """The estimator's defaults, with the sizes that depend on the chain scaled to ``steps``."""
    params = inspect.signature(factory).parameters
    section: dict = {"name": name}
    sizes = {"k": 1, "n": 2, "m": paper_scaled(20, steps), "states": 2, "group_size": group_size}
    for key, value in sizes.items():
        if key in params and not (key == "k" and name != "draft-k"):
            section[key] = value
    for key in ("k", "window"):  # another estimator's step count (drtune's k, mix-grpo's window) fits the chain
        default = params[key].default if key in params else None
        if key not in section and isinstance(default, int) and default > steps:
            section[key] = steps
    return section


def settings(model: str, sampler: dict, estimator: dict, reward: dict, seed: int, lr: float, a) -> dict:
    batch = a.batch if needs_gradient(estimator) else a.rl_batch
    if "group_size" in estimator:
        batch = max(1, a.rl_batch // estimator["group_size"])  # prompts per step, G images each
    return {
        "model": {"name": model},
        "lora": {"rank": 4},
        "sampler": {"steps": a.sampler_steps, "guidance_scale": MODELS[model]["guidance_scale"], **sampler},
        "estimator": dict(estimator),
        "reward": dict(reward),
        "prompts": {"items": TRAIN_PROMPTS},
        "train": {
            "steps": 10**6,
            "batch_size": batch,
            "lr": lr,
            "grad_clip": 1.0,
            "seed": seed,
            "sample_every": 0,
            "checkpoint_every": 10**6,
        },
    }


def needs_gradient(estimator: dict) -> bool:
    return bool(getattr(load_registry().get("estimator", estimator["name"]).factory, "needs_reward_gradient", True))


def build(model: str, estimator: dict, reward: dict, seed: int, lr: float, a, folder: Path):
    """(trainer, sampler section), or (None, the estimator's refusal) when no sampler is accepted."""
    samplers = list(MODELS[model]["samplers"])
    if not needs_gradient(estimator):
        samplers.reverse()
    first_error = None
    for i, sampler in enumerate(samplers):
        try:
            return make_trainer(settings(model, sampler, estimator, reward, seed, lr, a), folder / f"s{i}"), sampler
        except DraftError as exc:
            first_error = first_error or str(exc)
    return None, first_error


@torch.no_grad()
def sample_eval(trainer, prompts: list[str], sampler, seed: int = 1234) -> torch.Tensor:
    model = trainer.model
    gen = torch.Generator().manual_seed(seed)
    noise = model.make_noise(len(prompts), gen)
    return model.decode(sampler.sample(model, model.encode_prompts(prompts), noise, generator=gen))


def deterministic_sampler(model: str, a):
    section = {
        "steps": a.sampler_steps,
        "guidance_scale": MODELS[model]["guidance_scale"],
        **MODELS[model]["samplers"][0],
    }
    return load_registry().build("sampler", section.pop("name"), **section)


def train(trainer, eval_sampler, budget: int, evals: int) -> dict:
    """Train until ``budget`` reward queries are spent; evaluate on the training and held-out prompts."""
    reward = trainer.c.reward

    def score(step: int, queries: int) -> dict:
        row = {"step": step, "queries": queries}
        for key, prompts in (("reward", TRAIN_PROMPTS), ("held_out", HELD_OUT_PROMPTS)):
            row[key] = reward(sample_eval(trainer, prompts, eval_sampler), prompts).mean().item()
        return row

    curve, queries, step, seconds = [score(0, 0)], 0, 0, 0.0
    marks = [budget * (i + 1) / evals for i in range(evals)]
    while queries < budget:
        t0 = time.perf_counter()
        row = trainer.train_step()
        seconds += time.perf_counter() - t0
        step += 1
        before, queries = queries, queries + row["reward_queries"]
        if any(before < m <= queries for m in marks) or queries >= budget:
            curve.append(score(step, queries))
    return {"evals": curve, "steps": step, "train_seconds": seconds}


def judge(trainer, eval_sampler, n: int, svc) -> dict:
    """How many final samples (every prompt, n each) the SVC reads as the prompted digit, and as an 8."""
    prompts = [p for p in PROMPTS for _ in range(n)]
    digits = torch.tensor([i for i in range(len(PROMPTS)) for _ in range(n)])
    pred = torch.from_numpy(
        svc.predict(to_sklearn_pixels(sample_eval(trainer, prompts, eval_sampler, seed=4321)))
    ).long()
    return {"prompted": int((pred == digits).sum()), "eight": int((pred == 8).sum()), "of": len(prompts)}


def second_half_mean(record: dict) -> float:
    rewards = [e["reward"] for e in record["evals"]]
    return statistics.fmean(rewards[len(rewards) // 2 + 1 :] or rewards[-1:])


def run_row(model: str, task: str, label: str, estimator: dict, a, tmp: Path, svc, log=print) -> dict:
    """The sweep and the seeds of one estimator on one (model, task); {"skipped": why} where it does not apply."""
    reward = TASKS[task]["reward"]
    eval_sampler = deterministic_sampler(model, a)
    records: dict[str, list[dict]] = {}
    sampler_used = None

    def one(seed: int, lr: float) -> dict | None:
        nonlocal sampler_used
        trainer, used = build(model, estimator, reward, seed, lr, a, tmp / f"{model}-{task}-{label}-{seed}-{lr:g}")
        if trainer is None:
            return {"skipped": used}
        sampler_used = used
        record = train(trainer, eval_sampler, a.budget, a.evals)
        record.update(seed=seed, lr=lr, judge=judge(trainer, eval_sampler, a.judge_n, svc))
        log(
            f"  [{model} {task} {label}] seed {seed} lr {lr:g}: eval {record['evals'][0]['reward']:.3f} -> "
            f"{record['evals'][-1]['reward']:.3f} in {record['steps']} steps ({record['train_seconds']:.0f} s)"
        )
        return record

    for lr in a.lrs:
        record = one(a.seeds[0], lr)
        if "skipped" in record:
            log(f"  [{model} {task} {label}] skipped: {record['skipped']}")
            return {"estimator": estimator, "skipped": record["skipped"]}
        records[f"{lr:g}"] = [record]
    best = max(records, key=lambda lr: second_half_mean(records[lr][0]))
    runs = records[best] + [one(seed, float(best)) for seed in a.seeds[1:]]
    return {
        "estimator": estimator,
        "sampler": sampler_used,
        "best_lr": float(best),
        "sweep": {lr: second_half_mean(r[0]) for lr, r in records.items()},
        "runs": runs,
    }


def step_costs(model: str, task: str, rows: dict[str, dict], a, tmp: Path) -> dict[str, float]:
    """Median seconds of one training step of each applicable estimator, all interleaved round by round
    after a warm-up round, so that the machine's load falls on all of them alike. With no rounds: the
    median over the seeds' runs of their own mean step time (not interleaved; for smoke runs)."""
    if a.cost_rounds == 0:
        return {
            label: statistics.median(r["train_seconds"] / r["steps"] for r in row["runs"])
            for label, row in rows.items()
            if "skipped" not in row
        }
    trainers = {}
    for label, row in rows.items():
        if "skipped" not in row:
            trainers[label], _ = build(
                model,
                row["estimator"],
                TASKS[task]["reward"],
                0,
                row["best_lr"],
                a,
                tmp / f"cost-{model}-{task}-{label}",
            )
    times: dict[str, list[float]] = {label: [] for label in trainers}
    for r in range(a.cost_rounds + 1):
        for label, trainer in trainers.items():
            t0 = time.perf_counter()
            trainer.train_step()
            if r:
                times[label].append(time.perf_counter() - t0)
    return {label: statistics.median(ts) for label, ts in times.items()}


def summarise(rows: dict[str, dict], costs: dict[str, float]) -> dict:
    """The curves' means over seeds, the common target and each estimator's line of the table."""
    curves = {}
    for label, row in rows.items():
        if "skipped" in row:
            continue
        runs = row["runs"]
        n = min(len(r["evals"]) for r in runs)
        curves[label] = {
            key: [statistics.fmean(r["evals"][i][key] for r in runs) for i in range(n)]
            for key in ("queries", "step", "reward", "held_out")
        }
        curves[label]["min"] = [min(r["evals"][i]["reward"] for r in runs) for i in range(n)]
        curves[label]["max"] = [max(r["evals"][i]["reward"] for r in runs) for i in range(n)]
        curves[label]["seconds"] = [s * costs[label] for s in curves[label]["step"]]
    if not curves:
        return {"curves": {}, "table": {}, "target": None}
    base = statistics.fmean(c["reward"][0] for c in curves.values())
    gain = max(max(c["reward"]) - base for c in curves.values())
    target = base + 0.5 * gain if gain > 0 else None
    table = {}
    for label, c in curves.items():
        runs = rows[label]["runs"]
        line = {
            "lr": rows[label]["best_lr"],
            "sampler": " ".join(f"{v}" if k == "name" else f"{k} {v}" for k, v in rows[label]["sampler"].items()),
            "best": max(c["reward"]),
            "final": c["reward"][-1],
            "held_out": c["held_out"][-1],
            "held_out_base": c["held_out"][0],
            "step_seconds": costs[label],
            "svc_prompted": statistics.fmean(r["judge"]["prompted"] for r in runs),
            "svc_eight": statistics.fmean(r["judge"]["eight"] for r in runs),
            "svc_of": runs[0]["judge"]["of"],
        }
        line.update(first_reaching(c, target))
        table[label] = line
    return {"curves": curves, "table": table, "base": base, "target": target}


def first_reaching(c: dict, target: float | None) -> dict:
    """Queries and seconds at which the mean curve first reaches ``target`` (linear interpolation)."""
    if target is None:
        return {"reached": False}
    for i, value in enumerate(c["reward"]):
        if value >= target:
            if i == 0:
                return {"reached": True, "queries": 0.0, "seconds": 0.0}
            f = (target - c["reward"][i - 1]) / (value - c["reward"][i - 1])
            return {"reached": True, **{k: c[k][i - 1] + f * (c[k][i] - c[k][i - 1]) for k in ("queries", "seconds")}}
    return {"reached": False}


def markdown(result: dict, model: str, task: str) -> str:
    part = result["tasks"][task][model]
    head = (
        f"**{model}, {task}** (base {part.get('base', float('nan')):.3f}, target "
        + ("none: no estimator improved" if part.get("target") is None else f"{part['target']:.3f}")
        + ")\n\n"
        "| estimator | lr | sampler | queries to target | seconds to target | best reward | final | held-out (base) "
        "| SVC: prompted / eight | s per step |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for label, t in sorted(
        part["table"].items(), key=lambda kv: (not kv[1]["reached"], kv[1].get("queries", 0), -kv[1]["best"])
    ):
        reach = f"{t['queries']:.0f} | {t['seconds']:.1f}" if t["reached"] else "not reached | -"
        lines.append(
            f"| {label} | {t['lr']:g} | {t['sampler']} | {reach} | {t['best']:.3f} | {t['final']:.3f} | "
            f"{t['held_out']:.3f} ({t['held_out_base']:.3f}) | {t['svc_prompted']:.1f} / {t['svc_eight']:.1f} of "
            f"{t['svc_of']} | {t['step_seconds']:.2f} |"
        )
    skipped = [
        f"| {label} | skipped: {row['skipped'].splitlines()[0][:160]} |"
        for label, row in part["rows"].items()
        if "skipped" in row
    ]
    return head + "\n".join(lines + skipped) + "\n"


def plot(result: dict, path_stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["settings"]
    for task, per_model in result["tasks"].items():
        models = list(per_model)
        fig, axes = plt.subplots(len(models), 2, figsize=(12, 4 * len(models)), squeeze=False)
        for row, model in enumerate(models):
            part = per_model[model]
            for i, (label, c) in enumerate(part["curves"].items()):
                color = plt.cm.tab20(i % 20)  # more rows than the default cycle's ten colours
                for col, x in enumerate(("queries", "seconds")):
                    axes[row][col].plot(c[x], c["reward"], marker="o", ms=3, label=label, color=color)
                    axes[row][col].fill_between(c[x], c["min"], c["max"], color=color, alpha=0.1)
            for col, x in enumerate(("reward queries", "training seconds (steps x interleaved step cost)")):
                ax = axes[row][col]
                if part.get("target") is not None:
                    ax.axhline(part["target"], color="grey", ls=":", lw=1)
                ax.set_xlabel(x)
                ax.set_ylabel(TASKS[task]["label"])
                ax.set_title(f"{model}, {task} (dotted: common target)", fontsize=10)
                ax.grid(alpha=0.3)
            axes[row][0].legend(fontsize=7, ncol=2)
        fig.suptitle(
            f"leaderboard: {s['sampler_steps']} sampler steps, {s['budget']} reward queries per run, "
            f"{len(s['seeds'])} seeds at each estimator's best lr of {s['lrs']} (line: mean, band: min-max)",
            fontsize=10,
        )
        fig.tight_layout()
        fig.savefig(f"{path_stem}_{task}.png", dpi=90)
        plt.close(fig)


QUICK = [
    "--models",
    "digits-flow",
    "--sampler-steps",
    "2",
    "--budget",
    "1",
    "--evals",
    "1",
    "--lrs",
    "1e-2",
    "--seeds",
    "0",
    "--batch",
    "1",
    "--rl-batch",
    "2",
    "--group-size",
    "2",
    "--judge-n",
    "1",
    "--cost-rounds",
    "0",
]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke size (the test suite runs it): " + " ".join(QUICK))
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    ap.add_argument("--only", nargs="+", default=None, help="a subset of the estimator rows")
    ap.add_argument("--sampler-steps", type=int, default=4, help="sampler steps (default 4: sized for 2 shared cores)")
    ap.add_argument("--budget", type=int, default=16, help="reward queries per run")
    ap.add_argument("--evals", type=int, default=3, help="evaluations per run after the initial one")
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 3e-2], help="the sweep, on the first seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch", type=int, default=2, help="images per step of the gradient estimators")
    ap.add_argument("--rl-batch", type=int, default=4, help="images per step of the policy-gradient estimators")
    ap.add_argument(
        "--group-size", type=int, default=2, help="G of the group estimators (rl-batch / G prompts per step)"
    )
    ap.add_argument("--judge-n", type=int, default=2, help="final samples per prompt the SVC judges")
    ap.add_argument(
        "--cost-rounds",
        type=int,
        default=2,
        help="interleaved rounds timing one step of each estimator (0: each run's own steps)",
    )
    ap.add_argument("--out", default=str(RESULTS / "leaderboard"), help="path stem of the .json and .png files")
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="only merge the results of earlier runs into --out")
    args = list(argv) if argv is not None else sys.argv[1:]
    a = ap.parse_args(args)
    if a.combine:
        return combine(a.combine, a.out)
    if a.quick:
        a = ap.parse_args(QUICK + args)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    rows = estimator_rows(a.sampler_steps, a.group_size)
    if a.only:
        rows = {k: v for k, v in rows.items() if k in a.only}
    svc = fit_reference_svc()
    result: dict = {"settings": {k: v for k, v in vars(a).items() if k != "out"}, "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for task in a.tasks:
            for model in a.models:
                print(f"[{model} {task}]", flush=True)
                done = {label: run_row(model, task, label, est, a, Path(tmp), svc) for label, est in rows.items()}
                costs = step_costs(model, task, done, a, Path(tmp))
                part = {"rows": done, "step_seconds": costs, **summarise(done, costs)}
                result["tasks"].setdefault(task, {})[model] = part
                print(markdown(result, model, task), flush=True)
                result["wall_seconds"] = time.perf_counter() - t_start
                result["machine"] = machine()
                Path(f"{a.out}.json").write_text(json.dumps(result, indent=1))  # what is done so far, kept if stopped
    print(f"leaderboard: {result['wall_seconds']:.0f} s")
    plot(result, a.out)
    print(f"wrote {a.out}.json and {a.out}_<task>.png")
    return result


def combine(paths: list[str], out: str) -> dict:
    """One result (tables and plots) from runs of separate models (e.g. one process per model)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    result = {
        "settings": parts[0]["settings"],
        "tasks": {},
        "wall_seconds": {p: r["wall_seconds"] for p, r in zip(paths, parts)},
        "machine": parts[-1]["machine"],
    }
    for r in parts:  # rows of one (task, model) split over processes (--only) are joined, the target recomputed
        for task, per_model in r["tasks"].items():
            for model, part in per_model.items():
                into = result["tasks"].setdefault(task, {}).setdefault(model, {"rows": {}, "step_seconds": {}})
                into["rows"].update(part["rows"])
                into["step_seconds"].update(part["step_seconds"])
    for per_model in result["tasks"].values():
        for part in per_model.values():
            part.update(summarise(part["rows"], part["step_seconds"]))
    for task, per_model in result["tasks"].items():
        for model in per_model:
            print(markdown(result, model, task))
    Path(f"{out}.json").write_text(json.dumps(result, indent=1))
    plot(result, out)
    print(f"wrote {out}.json and {out}_<task>.png")
    return result


if __name__ == "__main__":
    main()
