"""TRL's DDPOTrainer (TRL 0.23.1) against draft's ``ddpo``, side by side: time per step and peak memory.

    PYTHONPATH=/some/dir python benchmarks/peer_trl_ddpo.py [--steps 20] [--batch 4] [--rounds 5] [--timestep-batch N]

The setup of peer_trl.py (its AlignProp comparison): both sides train the same ``tiny-random``
diffusers folder, on the same prompts, with DDIM at ``--steps`` steps, eta 1 (DDPO's sampler),
CFG 5 (TRL's default ``sample_guidance_scale``) in sampling and in the trained log-probabilities
(TRL's ``train_cfg``), float32 on the CPU, LoRA rank 4 on the attention projections, AdamW (lr,
betas, weight decay 1e-4, clip 1.0) and the reward ``jpeg-compressibility`` (quality 50; DDPO uses
its values only). DDPO's settings are equal on both sides: clip range 1e-4, advantages clipped at
±5, every timestep trained (``timestep_fraction`` 1), one inner epoch, the batch normalised by its
own mean and standard deviation (TRL's default; draft's ``per_prompt_stat_tracking: false``), one
optimiser step per sampled batch (TRL: ``sample_batch_size = train_batch_size = --batch``, one
sample batch per epoch, the gradient accumulated over the timesteps; draft: ``minibatches: 1``).
A step is a full step on each side: sampling with log-probabilities, the reward, the advantages
and one optimiser step on the timesteps' PPO loss (``DDPOTrainer.step`` against
``Trainer.train_step``). draft runs three times: its defaults (``checkpoint: true``, each trained
chunk's backward pass at once, and ``timestep_batch: auto``: here 16 of the 20 trained steps per
denoiser call, their states concatenated on the batch axis with one timestep per sample);
``checkpoint: false`` (one backward pass through all the steps' graphs); and ``timestep_batch: 1``
(one UNet call and one backward pass per trained step, as TRL and DDPO's code do: one step's
activations held). ``--timestep-batch N`` sets the first two's. The sides alternate step by step in
one process (the order rotating each round); peak memory comes from one fresh process per side
(benchlib.peak_memory).

Measured (RESULTS.md, issue 22 section; the defaults, load 2.2-2.7 on 2 cores): TRL 1.739 s per
step, draft 1.221 s (0.70x) with 8.5x TRL's peak memory (161 MiB against 19 MiB: 16 steps'
activations), ``checkpoint: false`` 0.67x, ``timestep_batch: 1`` 1.01x with 0.80x the memory.
Sampling (20 sequential UNet calls, the same on both sides) is about half of draft's step now.

Not the same, because TRL fixes them: TRL shuffles the timesteps per sample and backpropagates
each timestep's loss on its own (accumulated gradients), draft sums the steps' losses (per
chunk of ``timestep_batch`` steps); TRL's LoRA A is Gaussian-initialised, draft's Kaiming-uniform
(B = 0 on both).
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
import warnings
from pathlib import Path

import torch
from peer_trl import RecordingReward, alternate, make_ours, prompt_drawer, timed, trl_setup, write_model

SIDES = ("trl", "draft ckpt", "draft no-ckpt", "draft ckpt tb=1")


def import_ddpo():
    try:
        import trl
        from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline
    except ImportError as exc:
        sys.exit(
            f"peer_trl_ddpo.py needs TRL 0.23.1 (DDPOTrainer): {exc}.\n"
            "  pip install --no-deps --target /some/dir trl==0.23.1 pandas\n"
            "  PYTHONPATH=/some/dir:$PYTHONPATH python benchmarks/peer_trl_ddpo.py"
        )
    if trl.__version__ != "0.23.1":
        warnings.warn(f"peer_trl_ddpo.py was written against TRL 0.23.1; found {trl.__version__}", stacklevel=2)
    return DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline


def make_trl_ddpo(model_dir: Path, a, reward: RecordingReward):
    """A DDPOTrainer on the folder; one call = DDPOTrainer.step (one sampled batch, one optimiser step)."""
    DDPOConfig, DDPOTrainer, Pipeline = import_ddpo()
    pipe, common = trl_setup(model_dir, a, Pipeline)
    cfg = DDPOConfig(
        **common,
        sample_eta=1.0,
        sample_batch_size=a.batch,
        sample_num_batches_per_epoch=1,
        train_gradient_accumulation_steps=1,
        train_num_inner_epochs=1,
        train_timestep_fraction=1.0,
        train_cfg=True,
        train_clip_range=1e-4,
        train_adv_clip_max=5.0,
        per_prompt_stat_tracking=False,
    )
    prompt_fn = prompt_drawer(a.seed)

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        trainer = DDPOTrainer(cfg, reward.trl, prompt_fn, pipe)
    pipe.set_progress_bar_config(disable=True)
    count = iter(range(10**9))
    # accelerate's GradientState is one per process: draft's Accelerator (built after this one, or
    # between its steps) resets its accumulation to 1 step, and TRL would then take an optimiser step
    # per timestep. Each TRL step gets back its own accumulation (T timesteps), draft its own after it.
    accum = trainer.accelerator.gradient_accumulation_steps

    def step():
        before = trainer.accelerator.gradient_accumulation_steps
        trainer.accelerator.gradient_accumulation_steps = accum
        try:
            return trainer.step(next(count), 0)
        finally:
            trainer.accelerator.gradient_accumulation_steps = before
            trainer.accelerator.gradient_state._set_sync_gradients(True)

    return step


def ours_estimator(checkpoint: bool, timestep_batch: int | None = None) -> dict:
    # timestep_batch None: ddpo's default
    return {
        **({} if timestep_batch is None else {"timestep_batch": timestep_batch}),
        "name": "ddpo",
        "clip_range": 1e-4,
        "adv_clip_max": 5.0,
        "timestep_fraction": 1.0,
        "inner_epochs": 1,
        "minibatches": 1,
        "per_prompt_stat_tracking": False,
        "checkpoint": checkpoint,
    }


def make_side(model_dir: Path, a, side: str, reward: RecordingReward):
    if side == "trl":
        return make_trl_ddpo(model_dir, a, reward)
    ddim = argparse.Namespace(**{**vars(a), "eta": 1.0})
    timestep_batch = 1 if side.endswith("tb=1") else a.timestep_batch
    return make_ours(model_dir, ddim, ours_estimator(side != "draft no-ckpt", timestep_batch), reward)


def memory_probe(model_dir: Path, a, side: str) -> dict:
    from benchlib import peak_memory

    step = make_side(model_dir, a, side, RecordingReward())
    step()  # warm-up: lazily built state on both sides
    return peak_memory(step, "cpu")


def memory_in_subprocess(model_dir: Path, a, side: str) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-probe",
        side,
        "--model-dir",
        str(model_dir),
        "--steps",
        str(a.steps),
        "--batch",
        str(a.batch),
        "--guidance",
        str(a.guidance),
        "--lr",
        str(a.lr),
        "--seed",
        str(a.seed),
        *([] if a.timestep_batch is None else ["--timestep-batch", str(a.timestep_batch)]),
    ]
    from benchlib import MMAP_ENV  # large allocations returned when freed: the peak tracks live tensors

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **MMAP_ENV})
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    ap.add_argument("--batch", type=int, default=4, help="images per step (TRL's sample and train batch)")
    ap.add_argument("--guidance", type=float, default=5.0, help="TRL's default sample_guidance_scale")
    ap.add_argument("--lr", type=float, default=3e-4, help="TRL's default train_learning_rate for DDPO")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up)")
    ap.add_argument("--timestep-batch", type=int, default=None, help="draft's ddpo timestep_batch (default: ddpo's)")
    ap.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write all numbers as JSON here")
    ap.add_argument("--memory-probe", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    import_ddpo()
    from draft_core.cli.common import quiet_libraries

    quiet_libraries()
    if a.memory_probe:
        result = memory_probe(a.model_dir, a, a.memory_probe)
        print(json.dumps(result))
        return result
    model_dir = write_model(Path(tempfile.mkdtemp(prefix="tiny-random-")))
    result: dict = {"settings": {k: v for k, v in vars(a).items() if k not in ("out", "model_dir", "memory_probe")}}
    print(f"tiny-random, DDPO: {a.steps} DDIM steps (eta 1), CFG {a.guidance}, batch {a.batch}, float32, 1 thread")
    rewards = {side: RecordingReward() for side in a.sides}
    steps = {side: make_side(model_dir, a, side, rewards[side]) for side in a.sides}
    times = alternate_all(steps, a.rounds)
    for side, ts in times.items():
        result[side] = {"seconds": ts, "median": statistics.median(ts), "reward_means": rewards[side].means}
        if not a.no_memory:
            result[side]["peak_mib"] = memory_in_subprocess(model_dir, a, side)["peak_mib"]
    if "trl" in result:
        for side in a.sides[1:] if a.sides[0] == "trl" else [s for s in a.sides if s != "trl"]:
            result[side]["ratio_to_trl"] = result[side]["median"] / result["trl"]["median"]
            if not a.no_memory:
                result[side]["memory_ratio_to_trl"] = result[side]["peak_mib"] / result["trl"]["peak_mib"]
    for side in a.sides:
        row = result[side]
        print(
            f"  {side:16s} {row['median']:.3f} s per step"
            + (f" (ratio to TRL {row['ratio_to_trl']:.2f})" if "ratio_to_trl" in row else "")
            + (
                ""
                if a.no_memory
                else f", peak {row['peak_mib']:.1f} MiB"
                + (f" (ratio {row['memory_ratio_to_trl']:.2f})" if "memory_ratio_to_trl" in row else "")
            )
        )
    from benchlib import write_json

    write_json(a.out, result)
    return result


def alternate_all(steps: dict, rounds: int) -> dict[str, list[float]]:
    """peer_trl.alternate for any number of sides: the order rotates by one each round."""
    if len(steps) == 2:
        return alternate(steps, rounds)
    names = list(steps)
    times = {n: [] for n in names}
    for r in range(1 + rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            seconds = timed(steps[n])
            if r:
                times[n].append(seconds)
    return times


if __name__ == "__main__":
    main()
