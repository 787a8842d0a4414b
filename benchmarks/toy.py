"""Training runs on ``digits`` for the toy-scale paper figures, through the project's own Trainer.

A run trains a LoRA with one estimator on one reward and, every ``eval_every`` steps,
scores a fixed evaluation batch (the ten digit prompts, fixed noise, full sampling
without gradient) with the same reward: a curve every estimator is judged on alike
(ReFL's own training reward is that of a one-step prediction, not of a final sample).
Runs are cached in ``benchmarks/results/runs/<tag>/`` (evaluation curve, per-step metrics,
LoRA; ``$DRAFT_BENCH_RUNS`` moves it), so the figure scripts share them.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from draft_core.config import load_config
from draft_core.lora import lora_state, save_lora
from draft_core.models.digits.data import PROMPTS
from draft_core.plugins import load_registry
from draft_core.training.components import build_components
from draft_core.training.runner import Trainer

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "runs"
REWARD_8 = {"name": "digit-classifier", "target": 8}


def paper_scaled(value_at_50: int, steps: int) -> int:
    """A step count of the paper's 50-step setting (K = 10, m = 20) scaled to ``steps``."""
    return max(1, round(value_at_50 * steps / 50))


def settings(
    estimator: dict,
    seed: int,
    *,
    sampler_steps: int,
    batch: int,
    lr: float,
    reward: dict | None = None,
    lora_rank: int = 4,
    sampler: dict | None = None,
) -> dict:
    """A run's config; ``sampler``: extra DDIM arguments (e.g. eta for the policy-gradient estimators)."""
    return {
        "model": {"name": "digits"},
        "lora": {"rank": lora_rank},
        "sampler": {"name": "ddim", "steps": sampler_steps, "guidance_scale": 7.5, **(sampler or {})},
        "estimator": dict(estimator),
        "reward": dict(reward or REWARD_8),
        "prompts": {"source": "digits"},
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


def make_trainer(raw: dict, folder: Path) -> Trainer:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.yaml").write_text(yaml.safe_dump(raw, sort_keys=True))
    config = load_config(folder / "settings.yaml")
    trainer = Trainer(config, folder / "run", build_components(config), progress=False)
    trainer.setup()
    return trainer


@torch.no_grad()
def evaluate(trainer: Trainer, n_per_prompt: int = 1, seed: int = 1234, judge=None, sampler=None) -> float:
    """Mean reward (the training reward, or ``judge``) of full samples for the ten digit prompts
    with fixed noise, sampled with the run's own sampler (or ``sampler``)."""
    model, sampler = trainer.model, sampler or trainer.c.sampler
    prompts = [p for p in PROMPTS for _ in range(n_per_prompt)]
    gen = torch.Generator().manual_seed(seed)
    noise = model.make_noise(len(prompts), gen)
    images = model.decode(sampler.sample(model, model.encode_prompts(prompts), noise, generator=gen))
    return (judge or trainer.c.reward)(images, prompts).mean().item()


def tag_of(raw: dict, n_steps: int, eval_every: int) -> str:
    est = raw["estimator"]
    est_tag = est["name"] + "".join(f"-{k}{v}" for k, v in sorted(est.items()) if k != "name")
    rew = raw["reward"]
    rew_tag = rew["name"] + "".join(f"-{k}{v}" for k, v in sorted(rew.items()) if k != "name")
    t = raw["train"]
    samp = "".join(
        f"-{k}{v}" for k, v in sorted(raw["sampler"].items()) if k not in ("name", "steps", "guidance_scale")
    )
    return (
        f"{est_tag}_{rew_tag}_T{raw['sampler']['steps']}{samp}_b{t['batch_size']}_lr{t['lr']:g}"
        f"_n{n_steps}_e{eval_every}_s{t['seed']}"
    )


def runs_dir() -> Path:
    """The run cache: ``$DRAFT_BENCH_RUNS`` or benchmarks/results/runs (ignored by git)."""
    return Path(os.environ.get("DRAFT_BENCH_RUNS", RUNS))


def train_run(
    raw: dict, n_steps: int, eval_every: int, *, log=print, judge: dict | None = None, eval_sampler: dict | None = None
) -> dict[str, Any]:
    """Train (or load the cached result of) one run; returns its record. judge: a reward section
    to evaluate with instead of the training reward (e.g. the real JPEG size). eval_sampler: a
    sampler section to evaluate with instead of the run's own (whose reward is then kept as
    ``reward_own`` beside it)."""
    tag = tag_of(raw, n_steps, eval_every)
    for key, section in (("judge", judge), ("eval", eval_sampler)):
        if section:
            tag += f"_{key}-" + "-".join(f"{v}" for _, v in sorted(section.items()))
    folder = runs_dir() / tag
    done = folder / "record.json"
    if done.exists():
        return json.loads(done.read_text())
    trainer = make_trainer(raw, folder)
    scorer = _plugin(judge, "reward") if judge else None
    if hasattr(scorer, "to"):
        scorer.to(trainer.model.device)
    other = _plugin(eval_sampler, "sampler") if eval_sampler else None

    def score(step: int, queries: int) -> dict[str, Any]:
        row = {"step": step, "queries": queries, "reward": evaluate(trainer, judge=scorer, sampler=other)}
        if other is not None:
            row["reward_own"] = evaluate(trainer, judge=scorer)
        return row

    rows, evals, queries = [], [], 0
    t_start = time.perf_counter()
    evals.append(score(0, 0))
    for step in range(1, n_steps + 1):
        row = trainer.train_step()
        queries += row["reward_queries"]
        rows.append({k: row[k] for k in ("step", "reward_mean", "grad_norm", "seconds", "reward_queries")})
        if step % eval_every == 0 or step == n_steps:
            evals.append(score(step, queries))
            log(f"  {folder.name}: step {step}, eval reward {evals[-1]['reward']:.3f}")
    save_lora(trainer.model, folder / "lora")
    torch.save(lora_state(trainer.model), folder / "lora_state.pt")
    record = {
        "tag": folder.name,
        "settings": raw,
        "judge": judge,
        "eval_sampler": eval_sampler,
        "steps": rows,
        "evals": evals,
        "train_seconds": time.perf_counter() - t_start,
        "lora": str(folder / "lora"),
    }
    done.write_text(json.dumps(record, indent=1))
    return record


def _plugin(section: dict, kind: str):
    name = section["name"]
    return load_registry().build(kind, name, **{k: v for k, v in section.items() if k != "name"})


def band(records: list[dict], key: str = "reward") -> dict[str, list[float]]:
    """Mean, min and max across seeds of the evaluation curve (runs share their eval steps)."""
    columns = list(zip(*[[e[key] for e in r["evals"]] for r in records]))
    return {
        "step": [e["step"] for e in records[0]["evals"]],
        "queries": [statistics.fmean(c) for c in zip(*[[e["queries"] for e in r["evals"]] for r in records])],
        "mean": [statistics.fmean(c) for c in columns],
        "min": [min(c) for c in columns],
        "max": [max(c) for c in columns],
    }


def add_training_args(ap) -> None:
    """The run settings every figure script shares (so their runs share the cache)."""
    ap.add_argument("--sampler-steps", type=int, default=10, help="DDIM steps (default 10)")
    ap.add_argument("--train-steps", type=int, default=30, help="training steps per run (default 30)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-every", type=int, default=5, help="training steps between evaluations")


def common_settings(a) -> dict[str, Any]:
    return dict(sampler_steps=a.sampler_steps, batch=a.batch, lr=a.lr)


def write_figure(result: dict, stem: str, plot) -> None:
    """Add the machine to ``result``, write ``stem``.json and plot ``stem``.png."""
    result["machine"] = machine()
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(result, f"{stem}.png")
    print(f"wrote {stem}.json and {stem}.png")


def machine() -> dict[str, Any]:
    import platform

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(),
    }
