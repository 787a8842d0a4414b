"""What the benchmark suite and scripts share: the cases, one training step, peak memory.

A *case* is sampling alone or one registered estimator with its arguments. One training
step of a case = the estimator's forward (sampling with or without autograd, decode,
reward), the backward pass, and an AdamW step on the LoRA parameters. Sampling alone =
no-grad sampling and decode, what the same batch costs to generate.

Peak memory of a step (``peak_memory``), measured in a fresh process per case
(``python benchmarks/benchlib.py memory ...``) so that nothing earlier inflates it:

- CUDA: ``torch.cuda.max_memory_allocated()`` over the step, minus what was allocated
  before it (the model and LoRA): the tensors the step itself needs at its peak.
- CPU: the process's peak resident set size (``VmHWM`` in ``/proc/self/status``, which
  ``ru_maxrss`` reports at exit) over the step, minus the resident size just before it.
  The peak is reset first (``echo 5 > /proc/self/clear_refs``) after glibc has returned
  freed memory (``malloc_trim``), so the figure is the step's own high-water mark above
  the loaded model, allocator overheads included. The subprocess runs with
  ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then serves every allocation of 64 KiB or more
  (all activations here) with mmap and returns it when freed, so the peak tracks live
  tensors, as CUDA's caching allocator reuses blocks. With glibc's default (a threshold
  that grows up to 32 MiB), freed activations stay in the heap and fragment it, and a
  long backward pass (full DRaFT: one recomputation per step) shows a peak that grows
  with the number of steps although the live tensors do not (``--glibc-default``).

The CPU probe also reports ``tensor_peak_mib`` (``tensor_peak``): the peak of the bytes of
live tensors during a second run of the step, from the allocation and free events of
PyTorch's CPU allocator that ``torch.profiler`` records (``profile_memory``), above those
alive before it: the CPU counterpart of CUDA's ``max_memory_allocated``, without the
allocator's heap, Python objects or autograd's own bookkeeping (which grows by some
100 KiB per checkpointed sampling step, whatever the model's size).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from draft_core.lora import add_lora
from draft_core.memory import CheckpointedReward
from draft_core.models import load_model
from draft_core.models.digits.data import PROMPTS as DIGIT_PROMPTS
from draft_core.plugins import load_registry
from draft_core.plugins.protocols import EstimatorOutput, StepInputs

# name -> estimator section ({"name": registered estimator, **arguments}); None = sampling alone.
CASES: dict[str, dict[str, Any] | None] = {
    "sampling": None,
    "draft-k K=1": {"name": "draft-k", "k": 1},
    "draft-k K=5": {"name": "draft-k", "k": 5},
    "draft-k K=10": {"name": "draft-k", "k": 10},
    "draft-k K=25": {"name": "draft-k", "k": 25},
    "draft-k K=50": {"name": "draft-k", "k": 50},
    "draft (full, ckpt)": {"name": "draft"},
    "draft-lv n=1": {"name": "draft-lv", "n": 1},
    "draft-lv n=2": {"name": "draft-lv", "n": 2},
    "draft-lv n=4": {"name": "draft-lv", "n": 4},
    "refl m=20": {"name": "refl", "m": 20},
    "dpg states=2": {"name": "dpg", "states": 2},
    "ddpo": {"name": "ddpo"},
    "grpo G=4": {"name": "grpo", "group_size": 4},
    "direct-align": {"name": "direct-align"},
    "drtune K=3": {"name": "drtune", "k": 3},
    "mix-grpo G=4": {"name": "mix-grpo", "group_size": 4, "window": 2},
    "diffusion-nft G=4": {"name": "diffusion-nft", "group_size": 4},
}

# Cases whose estimator samples with noise (its policy is each step's Gaussian): DDIM with
# eta = 1, as DDPO samples; the others use the deterministic DDIM of the Bench.
STOCHASTIC_CASES = {"ddpo", "grpo G=4", "mix-grpo G=4"}

# Cases that only some models can run: dpg adapts the reward's network as its critic, so it
# needs a network reward (digits' classifier), not JPEG; MixGRPO and DiffusionNFT are flow-model
# methods (the suite runs them on the tiny SD3).
CASE_MODELS: dict[str, tuple[str, ...]] = {
    "dpg states=2": ("digits",),
    "mix-grpo G=4": ("tiny-random-sd3",),
    "diffusion-nft G=4": ("tiny-random-sd3",),
}


def pairs() -> list[tuple[str, str]]:
    """Every (model, case) the suite runs."""
    return [(m, c) for m in MODELS for c in CASES if m in CASE_MODELS.get(c, (m,))]


# Each model with the reward and prompts it is benchmarked on (and a guidance scale other than 7.5:
# FLUX.1-dev's distilled default). Every family samples with its default sampler.
_JPEG = {"reward": {"name": "jpeg-compressibility", "quality": 50}, "prompts": ["a photo of a cat", "a photo of a dog"]}
MODELS: dict[str, dict[str, Any]] = {
    "tiny-random": _JPEG,
    "digits": {"reward": {"name": "digit-classifier", "target": 8}, "prompts": DIGIT_PROMPTS},
    "tiny-random-sdxl": _JPEG,
    "tiny-random-sd3": _JPEG,
    "tiny-random-flux": {**_JPEG, "guidance": 3.5},
}


def fit_to_steps(section: dict[str, Any] | None, steps: int) -> dict[str, Any] | None:
    """The case's arguments with K and m clipped to the sampler's steps (for short smoke runs)."""
    if section is None:
        return None
    out = dict(section)
    for key in ("k", "m"):
        if key in out:
            out[key] = min(out[key], steps)
    return out


@dataclass
class Bench:
    """A model with a fresh LoRA, a sampler with guidance, a reward and a fixed batch of prompts."""

    model: Any
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    sampler: Any
    reward: Any
    prompts: list[str]
    registry: Any
    checkpoint_reward: bool | str = "auto"  # as train.checkpoint_reward (the decode's is the model's own)

    @property
    def steps(self) -> int:
        return self.sampler.num_steps

    @property
    def sampler_name(self) -> str:
        """The sampler's registered name (its class's, for a sampler built outside the registry)."""
        return next(
            (
                n
                for n in self.registry.names("sampler")
                if isinstance(self.sampler, self.registry.get("sampler", n).factory)
            ),
            type(self.sampler).__name__,
        )

    def estimator(self, case: str) -> Any:
        """The registered estimator of ``case`` (None for sampling alone)."""
        section = fit_to_steps(CASES[case], self.steps)
        if section is None:
            return None
        args = {k: v for k, v in section.items() if k != "name"}
        return self.registry.build("estimator", section["name"], **args)

    def inputs(self, seed: int) -> StepInputs:
        gen = torch.Generator().manual_seed(seed)
        cond = self.model.encode_prompts(self.prompts)
        return StepInputs(
            self.model, self.sampler, self.reward, cond, self.model.make_noise(len(self.prompts), gen), gen
        )

    @torch.no_grad()
    def sample_alone(self, seed: int = 0) -> torch.Tensor:
        inputs = self.inputs(seed)
        return self.model.decode(self.sampler.sample(self.model, inputs.cond, inputs.noise, generator=inputs.generator))

    def stochastic_sampler(self) -> Any:
        """DDIM with eta = 1 (DDPO's sampler), or flow-sde for a flow-matching family, with the Bench
        sampler's steps and guidance."""
        name, extra = ("flow-sde", {}) if self.model.flow_matching else ("ddim", {"eta": 1.0})
        return self.registry.build(
            "sampler", name, steps=self.steps, guidance_scale=self.sampler.guidance_scale, **extra
        )

    def train_step(self, estimator: Any, seed: int = 0, sampler: Any = None) -> EstimatorOutput:
        """As the runner runs it: the reward checkpointed by its default (``"auto"``), the
        estimator free to run its own backward passes, its hook after the update."""
        inputs = replace(
            self.inputs(seed),
            reward=CheckpointedReward(self.reward, self.checkpoint_reward),
            backward=lambda loss: loss.backward(),
        )
        if sampler is not None:
            inputs.sampler = sampler
        out = estimator(inputs)
        if not out.backward_done:
            out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if hasattr(estimator, "on_optimizer_step"):
            estimator.on_optimizer_step(True)
        return out

    def runner(self, case: str) -> Callable[[int], Any]:
        """A function of the seed that runs one step of ``case``."""
        est = self.estimator(case)
        if est is None:
            return self.sample_alone
        sampler = self.stochastic_sampler() if case in STOCHASTIC_CASES else None
        return lambda seed=0: self.train_step(est, seed, sampler)


def make_bench(
    model_name: str,
    steps: int,
    batch: int,
    device: str | None = None,
    guidance_scale: float | None = None,
    lora_rank: int = 4,
    sampler: str | None = None,
) -> Bench:
    """sampler: a registered sampler (default: the model family's ``default_sampler``)."""
    registry = load_registry()
    spec = MODELS[model_name]
    model = load_model(model_name, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        params = add_lora(model, rank=lora_rank)
    guidance_scale = spec.get("guidance", 7.5) if guidance_scale is None else guidance_scale
    sampler = registry.build("sampler", sampler or model.default_sampler, steps=steps, guidance_scale=guidance_scale)
    reward_args = {k: v for k, v in spec["reward"].items() if k != "name"}
    reward = registry.build("reward", spec["reward"]["name"], **reward_args)
    if hasattr(reward, "to"):
        reward.to(model.device)
    prompts = [spec["prompts"][i % len(spec["prompts"])] for i in range(batch)]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    return Bench(model, params, optimizer, sampler, reward, prompts, registry)


def minimal_draft1(bench: Bench) -> Callable[[int], Any]:
    """The speed guard's reference: one DRaFT-1 step written by hand on the bench's model, LoRA,
    reward and optimizer, with nothing of draft's sampler, estimator or reward wrappers.

    The chain runs under no_grad except its last step; the scheduler is diffusers' own, built fresh
    each step (a flow scheduler counts its steps); the decode and reward are called plainly (no
    checkpointing, no contract checks); loss = -mean reward. For the ``sd`` family the UNet is called
    directly (so the family's ``denoise`` is measured too); other families go through ``denoise``,
    which is where their conditioning (SDXL's time ids, FLUX's packing) lives. Same work as draft's
    ``draft-k K=1`` with deterministic sampling: prompts encoded once per step, CFG, one backward."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    model, steps, guidance = bench.model, bench.steps, bench.sampler.guidance_scale
    flow = model.flow_matching
    unet = model.named_modules().get("unet") if model.family == "sd" else None

    def guided_output(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if unet is None:
            return model.denoise(x, t, cond, guidance)
        context = torch.cat([cond.uncond.expand(x.shape[0], -1, -1), cond.cond])
        out_u, out_c = unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample.float().chunk(2)
        return out_u + guidance * (out_c - out_u)

    def loss(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(-mean reward, rewards) of the batch drawn from ``seed``, the graph through the last step."""
        gen = torch.Generator().manual_seed(seed)
        cond = model.encode_prompts(bench.prompts)
        x = model.make_noise(len(bench.prompts), gen)
        if flow:
            sched = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)
            sched.set_timesteps(steps, device=model.device, **model.timestep_kwargs(steps))
        else:
            sched = DDIMScheduler.from_config(model.scheduler_config)
            sched.set_timesteps(steps, device=model.device)
            x = x * sched.init_noise_sigma
        timesteps = sched.timesteps
        with torch.no_grad():
            for t in timesteps[:-1]:
                x = sched.step(guided_output(x, t, cond), t, x).prev_sample
        x = sched.step(guided_output(x, timesteps[-1], cond), timesteps[-1], x).prev_sample
        rewards = bench.reward(model._decode(x), bench.prompts)
        return -rewards.mean(), rewards.detach()

    def step(seed: int = 0) -> torch.Tensor:
        value, rewards = loss(seed)
        value.backward()
        bench.optimizer.step()
        bench.optimizer.zero_grad(set_to_none=True)
        return rewards

    step.loss = loss  # for the test that the guard's two sides compute the same gradient
    return step


@torch.no_grad()
def warm_up(bench: Bench) -> None:
    """Load what loads lazily (the empty-prompt embedding, reward weights) before measuring."""
    bench.model.encode_prompts(bench.prompts)
    bench.reward(torch.zeros(1, 3, *bench.model.image_size, device=bench.model.device), bench.prompts[:1])


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    bench: Bench, cases: list[str], rounds: int, warmup: int = 1, runners: dict[str, Callable[[int], Any]] | None = None
) -> dict[str, list[float]]:
    """Seconds per step of each case; each round runs every case once, the order rotating
    from round to round, so that machine noise falls on all cases alike. ``runners``: the
    functions of the seed to time under those names, instead of the cases' own."""
    runs = runners or {case: bench.runner(case) for case in cases}
    times: dict[str, list[float]] = {case: [] for case in cases}
    device = bench.model.device
    for r in range(warmup + rounds):
        order = cases[r % len(cases) :] + cases[: r % len(cases)]
        for case in order:
            sync(device)
            t0 = time.perf_counter()
            runs[case](r)
            sync(device)
            if r >= warmup:
                times[case].append(time.perf_counter() - t0)
    return times


def ratios(times: dict[str, list[float]], base: str = "sampling") -> dict[str, float]:
    """Median time of each case over the median time of ``base``."""
    ref = statistics.median(times[base])
    return {case: statistics.median(ts) / ref for case, ts in times.items()}


def write_json(path: Path | None, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` (its folder made); nothing when path is None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


# -- peak memory ----------------------------------------------------------------------
def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _reset_peak_rss() -> bool:
    """Free what glibc holds, then reset the kernel's peak-RSS mark; False where unsupported."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory(run: Callable[[], Any], device) -> dict[str, Any]:
    """Peak memory of ``run()`` above what was in use before it, in MiB (see the module doc)."""
    if torch.device(device).type == "cuda":
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # so that the reserved peak is this step's, not an earlier one's
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {
            "peak_mib": (peak - before) / 2**20,
            "total_peak_mib": peak / 2**20,
            "reserved_peak_mib": torch.cuda.max_memory_reserved() / 2**20,
            "method": "torch.cuda.max_memory_allocated - allocated before (total: with the weights)",
        }
    if not _reset_peak_rss():
        raise RuntimeError("peak CPU memory needs Linux's /proc/self/clear_refs (kernel >= 4.0)")
    before = _status_kib("VmRSS")
    run()
    peak = _status_kib("VmHWM")
    return {"peak_mib": (peak - before) / 1024, "method": "VmHWM (peak RSS, reset before the step) - VmRSS before"}


def tensor_peak(run: Callable[[], Any]) -> float:
    """Peak MiB of live tensors on the CPU during ``run()``, above those alive before it
    (see the module doc); traced by ``torch.profiler``, so slower than ``run()`` alone."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type().name == "CPU"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def memory_in_subprocess(
    model: str, case: str, steps: int, batch: int, timeout: float = 600, glibc_default: bool = False
) -> dict[str, Any]:
    """Run ``peak_memory`` for one case in a fresh Python process; returns its JSON."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "memory",
        "--model",
        model,
        "--case",
        case,
        "--steps",
        str(steps),
        "--batch",
        str(batch),
    ]
    env = dict(os.environ) if glibc_default else {**os.environ, **MMAP_ENV}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _memory_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="benchlib.py memory", description="peak memory of one step of one case")
    ap.add_argument("--model", default="tiny-random", choices=sorted(MODELS))
    ap.add_argument("--case", default="draft-k K=1", choices=list(CASES))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bench = make_bench(args.model, args.steps, args.batch)
    run = bench.runner(args.case)
    warm_up(bench)
    result = peak_memory(lambda: run(0), bench.model.device)
    if torch.device(bench.model.device).type == "cpu":
        result["tensor_peak_mib"] = tensor_peak(lambda: run(0))
    result.update(
        model=args.model,
        case=args.case,
        steps=args.steps,
        batch=args.batch,
        malloc_mmap_threshold=os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default"),
    )
    print(json.dumps(result))


def _memory_table_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(
        prog="benchlib.py memory-table", description="peak memory of every case, one process each"
    )
    ap.add_argument("--model", default="tiny-random", choices=sorted(MODELS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--glibc-default", action="store_true", help="leave glibc's mmap threshold as it is")
    ap.add_argument(
        "--cases",
        nargs="+",
        default=None,
        choices=list(CASES),
        metavar="CASE",
        help="these cases only (default: every case the model runs); draft-k K=1 is always included",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    chosen = [
        c for m, c in pairs() if m == args.model and (args.cases is None or c in args.cases or c == "draft-k K=1")
    ]
    rows = {
        case: memory_in_subprocess(args.model, case, args.steps, args.batch, glibc_default=args.glibc_default)
        for case in chosen
    }
    base = rows["draft-k K=1"]["peak_mib"]
    print(
        f"{args.model}, {args.steps} DDIM steps, batch {args.batch}, malloc: "
        f"{'glibc default' if args.glibc_default else MMAP_ENV}"
    )
    tensors = rows["draft-k K=1"].get("tensor_peak_mib")
    for case, row in rows.items():
        line = f"  {case:20s} {row['peak_mib']:8.1f} MiB  {row['peak_mib'] / base:5.2f}x DRaFT-1"
        if tensors:
            line += f"   live tensors {row['tensor_peak_mib']:7.1f} MiB  {row['tensor_peak_mib'] / tensors:5.2f}x"
        print(line)
    write_json(
        args.out,
        {
            "model": args.model,
            "steps": args.steps,
            "batch": args.batch,
            "glibc_default": args.glibc_default,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    commands = {"memory": _memory_main, "memory-table": _memory_table_main}
    if sys.argv[1:2] and sys.argv[1] in commands:
        commands[sys.argv[1]](sys.argv[2:])
    else:
        sys.exit("usage: python benchmarks/benchlib.py {memory|memory-table} [--model M] [--steps N] [--batch B] ...")
