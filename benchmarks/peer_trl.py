"""TRL's AlignProp (the last TRL release with it, 0.23.1) against draft, side by side.

    pip install -r benchmarks/requirements-peer.txt       # or: pip install --no-deps --target DIR trl==0.23.1 pandas
    python benchmarks/peer_trl.py [--steps 50] [--batch 4] [--rounds 5] [--ttr-steps 20] [--ttr-max 40]

Both sides train the same ``tiny-random`` model (one diffusers folder written once and
loaded by both), on the same prompts, batch, DDIM steps, guidance, eta, precision
(float32 on CPU), LoRA (rank 4, alpha 4, attention projections, B = 0 at the start),
optimiser (AdamW, lr, betas, weight decay 1e-4, clip 1.0) and reward
(``jpeg-compressibility``, quality 50; TRL's loss ``10 - mean r`` has the same gradient as
ours). A step is a full optimiser step on each side (``AlignPropTrainer.step`` against
``draft_core.training.runner.Trainer.train_step``).

1. Time per step at K = 1: TRL with ``truncated_backprop_rand=False,
   truncated_backprop_timestep=T-1`` against ``draft-k k=1``; then TRL's random truncation
   (its default, ``truncated_rand_backprop_minmax=(0, T)``) against ``draft-k k_range=[1, T]``.
   The two sides alternate step by step (the order swapping each round) in one process.
   Peak memory: one fresh process per side and setting (benchlib.peak_memory).
2. Time to reward: TRL with its default random truncation against ``draft-lv n=2``,
   alternating steps, each side's own step times summed; the reward level is the batch
   mean smoothed over ``--smooth`` steps, and the target is a fraction (``--level``) of
   the smaller of the two improvements over the start, so that both reach it.

Not the same on the two sides, because TRL fixes them: TRL draws A of the LoRA from a
Gaussian (peft "gaussian"), draft from peft's default (Kaiming-uniform), B = 0 on both;
TRL's random truncation decides *per sampling step* whether that step's UNet output keeps
its gradient (each step i with probability (i+1)/(T+1), ~T/2 steps on average, not a
contiguous tail); draft-k's k_range keeps the last K steps, K uniform in [1, T]. Noise and
prompt draws come from each library's own random streams.

Both random truncations keep T/2 steps on average (TRL: the sum over i of (i+1)/(T+1); draft:
E[K] = (1+T)/2), but draft's step time swings with its one draw of K (1 to T differentiable
steps), where TRL's count is a sum of T coin flips. With a handful of rounds the ratio then
measures which K draft happened to draw (2.8 s against 4.8 s per step in RESULTS section 15). So
the timed rounds of draft's random truncation draw K *stratified* (``--stratify``, the default):
K takes the midpoints of ``rounds`` equal slices of [1, T] in a shuffled order, the same
uniform distribution with far less sampling noise, and the ratio compares the two sides' mean
step time (the expected cost of a step). ``--no-stratify`` keeps draft's own draws.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml

PROMPTS = ["a photo of a cat", "a photo of a dog", "a photo of a horse", "a photo of a rabbit"]
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # TRL's DefaultDDPOStableDiffusionPipeline LoRA


def import_trl():
    try:
        import trl
        from trl import AlignPropConfig, AlignPropTrainer, DefaultDDPOStableDiffusionPipeline
    except ImportError as exc:
        sys.exit(
            f"peer_trl.py needs TRL 0.23.1 (the last release with AlignPropTrainer): {exc}.\n"
            "Install it beside this project, without touching torch/diffusers/transformers:\n"
            "  pip install --no-deps --target /some/dir trl==0.23.1 pandas\n"
            "  PYTHONPATH=/some/dir:$PYTHONPATH python benchmarks/peer_trl.py\n"
            "(or `pip install -r benchmarks/requirements-peer.txt` in a separate environment)."
        )
    if trl.__version__ != "0.23.1":
        warnings.warn(f"peer_trl.py was written against TRL 0.23.1; found {trl.__version__}", stacklevel=2)
    return AlignPropConfig, AlignPropTrainer, DefaultDDPOStableDiffusionPipeline


def write_model(folder: Path) -> Path:
    from draft_core.models.tiny import build_tiny_random

    build_tiny_random(seed=0).save_pretrained(folder)
    return folder


class RecordingReward:
    """The reward both sides use; TRL's wrapper records each batch mean (TRL returns none)."""

    def __init__(self) -> None:
        from draft_rewards.jpeg import JpegCompressibility

        self.reward = JpegCompressibility(quality=50)
        self.means: list[float] = []

    def trl(self, images, prompts, metadata):
        r = self.reward(images, list(prompts))
        self.means.append(r.detach().mean().item())
        return r, {}


def trl_setup(model_dir: Path, a, pipeline_class) -> tuple[object, dict]:
    """TRL's LoRA pipeline on the folder and the config arguments both TRL peers share (precision,
    seed, no logging or saving, sampling steps and guidance, batch, lr, clipping)."""
    import accelerate

    accelerate.PartialState()  # TRL's pipeline logs through accelerate before the trainer builds one
    with contextlib.redirect_stderr(io.StringIO()):
        pipe = pipeline_class(str(model_dir), use_lora=True)
    common = dict(
        mixed_precision="no",
        seed=a.seed,
        log_with=None,
        save_freq=10**9,
        num_epochs=10**9,
        project_kwargs={"project_dir": tempfile.mkdtemp(prefix="trl-")},
        sample_num_steps=a.steps,
        sample_guidance_scale=a.guidance,
        train_batch_size=a.batch,
        train_learning_rate=a.lr,
        train_max_grad_norm=1.0,
    )
    return pipe, common


def prompt_drawer(seed: int):
    """TRL's prompt function: one of PROMPTS, drawn from its own seeded generator."""
    rng = torch.Generator().manual_seed(seed)
    return lambda: (PROMPTS[int(torch.randint(len(PROMPTS), (1,), generator=rng))], {})


def make_trl(model_dir: Path, a, truncation: str, reward: RecordingReward):
    """An AlignPropTrainer on the folder; truncation: 'fixed' (K = 1) or 'random' (TRL's default)."""
    AlignPropConfig, AlignPropTrainer, Pipeline = import_trl()
    pipe, common = trl_setup(model_dir, a, Pipeline)
    cfg = AlignPropConfig(
        **common,
        sample_eta=a.eta,
        truncated_backprop_rand=(truncation == "random"),
        truncated_backprop_timestep=a.steps - 1,
        truncated_rand_backprop_minmax=(0, a.steps),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AlignPropTrainer(cfg, reward.trl, prompt_drawer(a.seed), pipe)
    pipe.set_progress_bar_config(disable=True)
    count = iter(range(10**9))

    def step():
        # TRL's random truncation draws for each sampling step i whether its UNet output keeps its gradient
        # (probability (i+1)/(T+1)); with probability T!/(T+1)^T no step does (0.09 at T = 3, 2e-21 at T = 50),
        # the loss has no graph and TRL's backward raises. Such a draw is redone, its time and reward record
        # dropped (``lost_seconds``, subtracted by ``timed``): the comparison is of steps that train.
        while True:
            t0 = time.perf_counter()
            try:
                return trainer.step(next(count), 0)
            except RuntimeError as exc:
                if truncation != "random" or "does not require grad" not in str(exc):
                    raise
                reward.means.pop()
                step.lost_seconds += time.perf_counter() - t0

    step.lost_seconds = 0.0
    return step


def timed(step) -> float:
    """Seconds one call of ``step`` takes, less any redone attempt's (make_trl's ``lost_seconds``)."""
    lost = getattr(step, "lost_seconds", 0.0)
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0 - (getattr(step, "lost_seconds", 0.0) - lost)


def make_ours(model_dir: Path, a, estimator: dict, reward: RecordingReward):
    from draft_core.config import load_config
    from draft_core.training.components import build_components
    from draft_core.training.runner import Trainer

    raw = {
        "model": {"name": str(model_dir)},
        "lora": {"rank": 4, "alpha": 4, "targets": LORA_TARGETS},
        "sampler": {"name": "ddim", "steps": a.steps, "guidance_scale": a.guidance, "eta": a.eta},
        "estimator": estimator,
        "reward": {"name": "jpeg-compressibility", "quality": 50},
        "prompts": {"items": PROMPTS},
        "train": {
            "steps": 10**6,
            "batch_size": a.batch,
            "lr": a.lr,
            "weight_decay": 1e-4,
            "grad_clip": 1.0,
            "seed": a.seed,
            "mixed_precision": "no",
        },
    }
    folder = Path(tempfile.mkdtemp(prefix="draft-peer-"))
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(folder / "config.yaml")
    trainer = Trainer(config, folder / "run", build_components(config), progress=False)
    trainer.setup()

    def step():
        row = trainer.train_step()
        reward.means.append(row["reward_mean"])
        return row

    step.estimator = trainer.c.estimator
    return step


def stratified_ks(lo: int, hi: int, n: int, seed: int) -> list[int]:
    """``n`` values of K covering [lo, hi] evenly (one per equal slice, its midpoint), shuffled."""
    ks = [lo + int((hi - lo + 1) * (j + 0.5) / n) for j in range(n)]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [ks[i] for i in order]


def stratify(step, ks: list[int], trainer_estimator) -> None:
    """Make draft-k's k_range draws come from ``ks`` (the warm-up step draws its own K)."""
    draws = iter(ks)
    own = trainer_estimator.draw_k

    def draw_k(inputs):
        drawn = own(inputs)  # the estimator's generator advances as it would
        k = next(draws, None)  # None: the warm-up step, or past the list
        return drawn if k is None else k

    trainer_estimator.draw_k = draw_k
    step.ks = ks


def ours_estimator(truncation: str, steps: int) -> dict:
    return {"name": "draft-k", "k": 1} if truncation == "fixed" else {"name": "draft-k", "k_range": [1, steps]}


def alternate(steps: dict, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Each round runs one step of each side, the order swapping every round."""
    names = list(steps)
    times = {n: [] for n in names}
    for r in range(warmup + rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            seconds = timed(steps[n])
            if r >= warmup:
                times[n].append(seconds)
    return times


def memory_probe(model_dir: Path, a, side: str, truncation: str) -> dict:
    from benchlib import peak_memory

    reward = RecordingReward()
    step = (
        make_trl(model_dir, a, truncation, reward)
        if side == "trl"
        else make_ours(model_dir, a, ours_estimator(truncation, a.steps), reward)
    )
    step()  # warm-up: lazily built state on both sides
    torch.manual_seed(a.seed)  # TRL's random truncation: the same draw for the measured step
    import random

    random.seed(a.seed)
    return peak_memory(step, "cpu")


def memory_in_subprocess(model_dir: Path, a, side: str, truncation: str) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-probe",
        side,
        "--truncation",
        truncation,
        "--model-dir",
        str(model_dir),
        "--steps",
        str(a.steps),
        "--batch",
        str(a.batch),
        "--guidance",
        str(a.guidance),
        "--eta",
        str(a.eta),
        "--lr",
        str(a.lr),
        "--seed",
        str(a.seed),
    ]
    from benchlib import MMAP_ENV  # large allocations returned when freed: the peak tracks live tensors

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **MMAP_ENV})
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def smooth(values: list[float], w: int) -> list[float]:
    return [statistics.fmean(values[max(0, i - w + 1) : i + 1]) for i in range(len(values))]


def reach(means: dict[str, list[float]], seconds: dict[str, list[float]], level_frac: float, window: int) -> dict:
    """When each side's smoothed reward first reaches start + level_frac x the larger best gain.

    means/seconds: per side, the batch-mean reward and the wall time of each step; the
    first side is the reference of the ratio (second / first). The start is the mean of
    the two sides' first batch (the same base model). A side that never reaches the level
    in its steps is reported as not reached, with its total time as a lower bound; the
    ratio is then a bound too (``ratio_is_bound``). With no gain on either side there is
    no level."""
    curves = {n: smooth(v, window) for n, v in means.items()}
    start = statistics.fmean(v[0] for v in means.values())
    gains = {n: max(c) - start for n, c in curves.items()}
    out: dict = {"start_reward": start, "best_gain": gains, "smooth": window, "level": None}
    if max(gains.values()) <= 0:
        return out
    out["level"] = level = start + level_frac * max(gains.values())
    for n, c in curves.items():
        hit = next((i for i, v in enumerate(c) if v >= level), None)
        out[n] = {
            "reached": hit is not None,
            "steps_to_level": None if hit is None else hit + 1,
            "seconds_to_level": sum(seconds[n] if hit is None else seconds[n][: hit + 1]),
        }
    ref, other = list(means)
    if out[ref]["reached"]:
        out["ratio"] = out[other]["seconds_to_level"] / out[ref]["seconds_to_level"]
        out["ratio_is_bound"] = not out[other]["reached"]  # then a lower bound
    return out


TTR_OURS = {
    "draft-lv": lambda steps: {"name": "draft-lv", "n": 2},
    "draft-k-range": lambda steps: {"name": "draft-k", "k_range": [1, steps]},
}


def time_to_reward(model_dir: Path, a) -> dict:
    """TRL (random truncation) against ours (draft-lv n=2 by default), alternating steps."""
    r_trl, r_ours = RecordingReward(), RecordingReward()
    steps = {
        "trl": make_trl(model_dir, a, "random", r_trl),
        "ours": make_ours(model_dir, a, TTR_OURS[a.ttr_ours](a.steps), r_ours),
    }
    seconds = {n: [] for n in steps}
    for i in range(a.ttr_max):
        for n in ["trl", "ours"] if i % 2 == 0 else ["ours", "trl"]:
            seconds[n].append(timed(steps[n]))
    means = {"trl": r_trl.means, "ours": r_ours.means}
    out = reach(means, seconds, a.level, a.smooth)
    out.update(
        steps=a.ttr_max,
        ours=dict(out.get("ours", {}), estimator=TTR_OURS[a.ttr_ours](a.steps)),
        reward_means=means,
        seconds=seconds,
    )
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps for the time per step (default 50)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=5.0, help="TRL's default sample_guidance_scale")
    ap.add_argument("--eta", type=float, default=1.0, help="TRL's default sample_eta")
    ap.add_argument("--lr", type=float, default=1e-3, help="TRL's default train_learning_rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per comparison (after one warm-up)")
    ap.add_argument("--no-random", action="store_true", help="skip the random-truncation time per step")
    ap.add_argument(
        "--stratify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draft's K for the timed random-truncation rounds: stratified over [1, T] (default) or its own draws",
    )
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--ttr-steps", type=int, default=20, help="DDIM steps for the time-to-reward runs (default 20)")
    ap.add_argument("--ttr-max", type=int, default=40, help="training steps per side for time to reward (0: skip)")
    ap.add_argument("--ttr-lr", type=float, default=1e-2, help="learning rate of both sides for time to reward")
    ap.add_argument(
        "--ttr-ours",
        choices=sorted(TTR_OURS),
        default="draft-lv",
        help="our side of the time to reward: draft-lv (n=2, default) or draft-k-range (k_range [1, T], AlignProp's kind)",
    )
    ap.add_argument("--no-step-time", action="store_true", help="only the time to reward")
    ap.add_argument("--level", type=float, default=0.5, help="target: start + LEVEL x the smaller best gain")
    ap.add_argument("--smooth", type=int, default=5, help="moving-average window of the reward curve, in steps")
    ap.add_argument("--out", type=Path, default=None, help="write all numbers as JSON here")
    ap.add_argument("--memory-probe", choices=["trl", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--truncation", choices=["fixed", "random"], default="fixed", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    import_trl()
    from draft_core.cli.common import quiet_libraries

    quiet_libraries()
    if a.memory_probe:
        result = memory_probe(a.model_dir, a, a.memory_probe, a.truncation)
        print(json.dumps(result))
        return result

    model_dir = write_model(Path(tempfile.mkdtemp(prefix="tiny-random-")))
    result: dict = {"settings": {k: v for k, v in vars(a).items() if k not in ("out", "model_dir", "memory_probe")}}
    print(f"tiny-random, {a.steps} DDIM steps (eta {a.eta}), CFG {a.guidance}, batch {a.batch}, float32, 1 thread")
    for trunc in [] if a.no_step_time else ["fixed"] + ([] if a.no_random else ["random"]):
        steps = {
            "trl": make_trl(model_dir, a, trunc, RecordingReward()),
            "ours": make_ours(model_dir, a, ours_estimator(trunc, a.steps), RecordingReward()),
        }
        # K=1 steps all cost the same: the median. Random truncation: the mean, i.e. the expected cost.
        stat = "median" if trunc == "fixed" else "mean"
        if trunc == "random" and a.stratify:
            # the warm-up round draws its own K; the timed rounds take the stratified ones
            stratify(steps["ours"], [None] + stratified_ks(1, a.steps, a.rounds, a.seed), steps["ours"].estimator)
        times = alternate(steps, a.rounds)
        row = {
            n: {"seconds": ts, "median": statistics.median(ts), "mean": statistics.fmean(ts)} for n, ts in times.items()
        }
        if getattr(steps["ours"], "ks", None):
            row["ours"]["k_draws"] = steps["ours"].ks[1:]
        row["statistic"] = stat
        row["ratio_ours_to_trl"] = row["ours"][stat] / row["trl"][stat]
        label = (
            "K=1"
            if trunc == "fixed"
            else (
                f"random truncation (TRL (0,{a.steps}) / draft-k k_range [1,{a.steps}]"
                f"{', stratified K' if a.stratify else ''})"
            )
        )
        print(
            f"  time per step, {label}: TRL {row['trl'][stat]:.3f} s, draft {row['ours'][stat]:.3f} s ({stat}), "
            f"ratio {row['ratio_ours_to_trl']:.2f}"
        )
        if not a.no_memory:
            for n in ("trl", "ours"):
                row[n]["peak_mib"] = memory_in_subprocess(model_dir, a, n, trunc)["peak_mib"]
            row["memory_ratio_ours_to_trl"] = row["ours"]["peak_mib"] / row["trl"]["peak_mib"]
            print(
                f"  peak memory, {label}: TRL {row['trl']['peak_mib']:.1f} MiB, draft {row['ours']['peak_mib']:.1f} MiB, "
                f"ratio {row['memory_ratio_ours_to_trl']:.2f}"
            )
        result[f"time_per_step_{trunc}"] = row
    if a.ttr_max:
        ttr_args = argparse.Namespace(**{**vars(a), "steps": a.ttr_steps, "lr": a.ttr_lr})
        ttr = time_to_reward(model_dir, ttr_args)
        result["time_to_reward"] = ttr
        head = f"  time to reward, TRL random truncation vs {a.ttr_ours} ({a.ttr_steps} DDIM steps, lr {a.ttr_lr}, {a.ttr_max} steps each, start {ttr['start_reward']:.5f})"
        print(head + (": no gain on either side" if ttr["level"] is None else f", level {ttr['level']:.5f}:"))
        for n, label in (("trl", "TRL"), ("ours", a.ttr_ours)):
            if n in ttr:
                row = ttr[n]
                print(
                    f"    {label}: "
                    + (
                        f"{row['seconds_to_level']:.1f} s ({row['steps_to_level']} steps)"
                        if row["reached"]
                        else f"not reached in {a.ttr_max} steps ({row['seconds_to_level']:.1f} s)"
                    )
                )
        if "ratio" in ttr:
            print(f"    ratio ours/TRL {'>= ' if ttr['ratio_is_bound'] else ''}{ttr['ratio']:.2f}")
    from benchlib import write_json

    write_json(a.out, result)
    return result


if __name__ == "__main__":
    main()
