"""One training step of a config, traced: peak device memory by category, and FLOPs.

``plan_step`` builds what ``draft train`` builds (the runner's own ``Trainer.setup``: model,
LoRA, learned sampler parameters, AdamW, the estimator and reward of the config) with every
weight on the meta device, and runs the runner's own ``train_step`` (every micro-batch:
sampling, decode, reward, backward; then clipping and the AdamW update) under a
``MemoryTracer`` (live tensor bytes, and FLOPs by torch's flop counter formulas).
``measure_step`` runs the same step on real
tensors (a warm-up step, then the measured one), for checking predictions against reality.

The peak is the steady state of a step: tensors the step creates and keeps (AdamW's moment
estimates, 2 fp32 tensors per LoRA parameter; a critic; caches) count from its start.
Not simulated: ``train.mixed_precision`` autocast (the weights' ``model.dtype`` is what the
plan uses); data-parallel processes (each holds what one process holds).
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from draft_core.config import Config
from draft_core.planning.architectures import META, PlanError, meta_model, module_tensors, use_architectures
from draft_core.planning.levers import dequantizing_linears
from draft_core.planning.meta import cpu_attention_flops, elide_repeats, simulate
from draft_core.planning.tracer import ACTIVATIONS, MemoryTracer
from draft_core.rewarding.spec import reward_terms, set_term_argument
from draft_core.training.distributed import rng_state, set_rng_state
from draft_core.training.runner import Trainer

BASE, LORA, REWARD, OPTIMIZER, KEPT = "base weights", "LoRA", "reward weights", "optimizer state", "kept by the step"
CATEGORIES = (BASE, LORA, REWARD, OPTIMIZER, KEPT, ACTIVATIONS)
DEVICE_TYPES = ("cuda", "cpu")


@dataclass
class StepTrace:
    """A traced step. peak: bytes on the device at the step's peak; breakdown: by CATEGORIES."""

    device_type: str
    dtype: str
    peak: int
    breakdown: dict[str, int]
    flops: int
    start: int = 0  # bytes on the device when the step begins (weights and kept state)
    sampling_flops: int = 0  # FLOPs of sampling and decoding the step's images without autograd
    processes: int = 1  # a per-device plan of this many processes (the frozen base sharded)
    notes: list[str] = field(default_factory=list)
    extra: Any = None

    @property
    def cost_ratio(self) -> float:
        """Predicted step cost over sampling alone, as a FLOP ratio."""
        return self.flops / self.sampling_flops if self.sampling_flops else float("nan")


class OneProcess:
    """What the runner asks of accelerate, for one process and no autocast."""

    num_processes, process_index, is_main_process = 1, 0, True
    distributed_type = SimpleNamespace(name="NO")

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def autocast(self):
        return contextlib.nullcontext()

    def gather(self, tensor):
        return tensor

    def wait_for_everyone(self) -> None:
        pass


class StepTrainer(Trainer):
    """The runner's Trainer on ``device`` with a model from ``model_factory`` (None: load it)."""

    def __init__(
        self, config: Config, components, run_dir: Path, device, model_factory: Callable[[], Any] | None = None
    ):
        super().__init__(config, run_dir, components, progress=False)
        self._device, self._factory = torch.device(device), model_factory

    def make_accelerator(self, cpu: bool):
        return OneProcess(self._device)

    def check_rewards(self) -> None:
        """Nothing: a plan loads no reward weights (meta tensors, or random ones with ``random_rewards``)."""

    def load_model(self, device, dtype):
        return super().load_model(device, dtype) if self._factory is None else self._factory()

    def log(self, message: str) -> None:  # a plan's step prints nothing
        pass


def plan_dtype(config: Config, device_type: str, dtype: str | None = None) -> torch.dtype:
    from draft_core.models.loading import resolve_dtype

    return resolve_dtype(dtype or config.model.dtype, torch.device(device_type))


def for_device(config: Config, device_type: str, dtype: str | None = None) -> tuple[Config, list[str]]:
    """A copy of ``config`` as it would run on ``device_type``: ``auto`` dtypes resolved (the model's,
    and each reward's that takes a ``dtype``), placed by the plan."""
    if device_type not in DEVICE_TYPES:
        raise PlanError(f"--device-type must be one of {', '.join(DEVICE_TYPES)}, got {device_type!r}.")
    config = copy.deepcopy(config)
    notes = []
    config.model.device = "auto"
    resolved = config.model.dtype = str(plan_dtype(config, device_type, dtype)).removeprefix("torch.")
    auto = "bfloat16" if device_type == "cuda" else "float32"
    for name, section, _ in reward_sections(config):
        if section.get("dtype", "auto") == "auto" and takes_dtype(name):
            _set_reward_dtype(config, name, auto)
            notes.append(f"reward {name}: dtype auto is {auto} on {device_type}")
    if config.train.mixed_precision != "no":
        notes.append(
            f"train.mixed_precision={config.train.mixed_precision} (autocast) is not simulated: "
            f"weights and activations are in model.dtype={resolved}"
        )
    return config, notes


def reward_sections(config: Config) -> list[tuple[str, dict, str]]:
    """(registered name, its arguments, the config key of its dtype) for each reward term."""
    return [(t.name, t.kwargs, f"{t.key}.dtype") for t in reward_terms(config.reward)]


def _set_reward_dtype(config: Config, name: str, dtype: str) -> None:
    set_term_argument(config.reward, name, "dtype", dtype)


def takes_dtype(reward_name: str) -> bool:
    """Whether the registered reward ``reward_name`` takes a ``dtype`` argument."""
    from draft_core.plugins import load_registry

    registry = load_registry()
    if reward_name not in registry.names("reward"):
        return False
    from draft_core.plugins.arguments import signature_of

    sig = signature_of(registry.get("reward", reward_name).factory, annotations=False)
    return sig is not None and "dtype" in sig.names()


def plan_step(
    config: Config, device_type: str = "cuda", dtype: str | None = None, processes: int = 1, budget: int | None = None
) -> StepTrace:
    """Trace one training step of ``config`` on the meta device, as ``device_type`` would run it;
    with ``processes`` > 1, one process's share (``train.batch_size / processes`` samples, the
    frozen base sharded: draft_core.planning.levers). ``budget``: for ``offload_text_encoders: auto``."""
    from draft_core.training.components import build_components

    config, notes = for_device(config, device_type, dtype)
    if processes > 1:
        if config.train.batch_size % processes:
            raise PlanError(
                f"train.batch_size={config.train.batch_size} is the global batch, split over the "
                f"{processes} processes; give a multiple of {processes}."
            )
        config.train.batch_size //= processes
    torch_dtype = plan_dtype(config, device_type)
    components = build_components(config)
    use_architectures(components.reward)
    with tempfile.TemporaryDirectory() as tmp, simulate(device_type):
        trainer = StepTrainer(
            config, components, Path(tmp) / "run", META, lambda: meta_model(config.model.name, torch_dtype)
        )
        try:
            trainer.setup()
            if device_type == "cuda":  # AdamW's default there: one kernel over all tensors, with their temporaries
                for group in trainer.optimizer.param_groups:
                    group["foreach"] = True
            _cpu_timesteps(trainer.c.sampler, trainer.model)
            _warm_up(trainer)
            with dequantizing_linears(trainer.model, config.model.quantize):  # torchao's kept copies (levers module)
                trace = _trace(trainer, "meta", elide=True, steps=1)
            trace.sampling_flops = _sampling_flops(trainer) * config.train.grad_accum
            notes += _apply_levers(trace, trainer.model, config, processes, budget)
        except Exception as exc:
            raise _plan_failure(exc) from exc
    trace.device_type, trace.dtype = device_type, str(torch_dtype).removeprefix("torch.")
    trace.notes, trace.processes = notes, processes
    return trace


def _apply_levers(trace: StepTrace, model: Any, config: Config, processes: int, budget: int | None) -> list[str]:
    """Shift the traced step by the levers' constant offsets of the base weights (levers module doc)."""
    from draft_core.planning.levers import apply_levers

    levers = apply_levers(
        model, config.model.quantize, config.model.offload_text_encoders, processes, trace.peak, budget
    )
    trace.peak += levers.delta
    trace.start += levers.delta
    trace.breakdown[BASE] += levers.delta
    return list(levers.notes)


def _plan_failure(exc: Exception) -> Exception:
    """An input error as it is; anything else (the step's own error, not the runner's account of a
    failed training step) as a PlanError that says a plan runs without values."""
    from draft_core.errors import DraftError
    from draft_core.training.faults import RewardPluginError

    if isinstance(exc, RewardPluginError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, DraftError):
        return exc
    return PlanError(
        f"tracing one training step of this config on the meta device failed: {type(exc).__name__}: {exc}. "
        f"A plan runs the step without values (shapes only), so a component whose shapes depend on the data "
        f"cannot be planned."
    )


def measure_step(
    config: Config,
    device="cpu",
    model_factory: Callable[[], Any] | None = None,
    around: Callable[[Callable[[], Any]], Any] | None = None,
    random_rewards: bool = False,
) -> StepTrace:
    """Run a warm-up step, then one measured step, on real tensors (tallied as ``plan_step`` tallies).
    model_factory: builds the model on ``device`` (default: load ``model.name``). around: runs the
    measured step itself (``around(step)``), e.g. inside another memory probe; what it returns is
    kept as ``extra``. random_rewards: reward networks with random weights (``architecture()``)."""
    from draft_core.training.components import build_components

    config = copy.deepcopy(config)
    config.model.device = "auto"
    components = build_components(config)
    if random_rewards:
        use_architectures(components.reward, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = StepTrainer(config, components, Path(tmp) / "run", device, model_factory)
        trainer.setup()
        _warm_up(trainer)
        trace = _trace(trainer, str(torch.device(device)), elide=False, steps=2, around=around)
    trace.device_type, trace.dtype = torch.device(device).type, str(trainer.model.dtype).removeprefix("torch.")
    return trace


def _cpu_timesteps(sampler, model) -> None:
    """A scheduler-driven sampler keeps its timesteps on the CPU: schedulers look a timestep up
    among them (``nonzero``), which needs values. The UNet moves each one to the device, as it
    does in a real run; the few bytes of timesteps are not worth modelling."""
    scheduler_class = getattr(sampler, "scheduler_class", None)
    if scheduler_class is None or not callable(getattr(sampler, "scheduler", None)):
        return
    sched = scheduler_class.from_config(model.scheduler_config)
    sched.set_timesteps(
        sampler.num_steps, device="cpu", **model.timestep_kwargs(sampler.num_steps)
    )  # a flow family's mu, sigmas
    sampler.scheduler = lambda _model, _sched=sched: _sched


def _warm_up(trainer: StepTrainer) -> None:
    """Load what loads lazily before the step (reward weights), so that it counts as weights."""
    model = trainer.model
    with torch.no_grad():
        images = torch.zeros(1, 3, *model.image_size, device=model.device)
        trainer.c.reward(images, trainer.c.prompts[:1])


def _device_key(device: str) -> str:
    return "cuda:0" if device == "cuda" else device


def _trace(trainer: StepTrainer, device: str, *, elide: bool, steps: int, around=None) -> StepTrace:
    device = _device_key(device)
    tracer = MemoryTracer(cpu_attention_flops())
    lora = {id(p) for p in trainer.params}
    base = [t for m in trainer.model.modules() for t in (*m.parameters(), *m.buffers()) if id(t) not in lora]
    tracer.register(base, BASE)
    tracer.register(trainer.params, LORA)
    tracer.register(module_tensors(trainer.c.reward), REWARD)
    unet = trainer.model.denoiser
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)][:1]  # LoRA on or off changes a call's cost
    elided = (
        elide_repeats(unet, tracer, device, lambda: tuple(m.disable_adapters for m in layers))
        if elide
        else contextlib.nullcontext()
    )
    extra = None
    rng = rng_state(trainer.gens)
    with tracer:
        for _ in range(steps - 1):  # warm-up steps: the measured one is the steady state
            trainer.train_step()
        set_rng_state(trainer.gens, rng)  # ... and draws what a plan's single step draws
        tracer.mark()
        flops = tracer.flops
        with elided:
            extra = around(trainer.train_step) if around is not None else trainer.train_step()
        flops = tracer.flops - flops
    tracer.relabel(
        [v for state in trainer.optimizer.state.values() for v in state.values() if torch.is_tensor(v)], OPTIMIZER
    )
    for rec in tracer.records:
        if rec.alive and rec.start >= 0 and rec.category == ACTIVATIONS:
            rec.category = KEPT
    peak = tracer.peak(device, steady=steps == 1, since_mark=True)
    breakdown = {c: peak.by_category.get(c, 0) for c in CATEGORIES}
    breakdown.update({c: v for c, v in peak.by_category.items() if c not in breakdown})
    return StepTrace(
        "", "", peak.total, breakdown, flops, start=peak.start, extra=extra if around is not None else None
    )


def _sampling_flops(trainer: StepTrainer) -> int:
    """FLOPs of sampling and decoding one micro-batch without autograd (elided repeats)."""
    model, sampler = trainer.model, trainer.c.sampler
    prompts, noise = trainer._batch()
    with torch.no_grad(), MemoryTracer(cpu_attention_flops()) as tracer, elide_repeats(model.denoiser, tracer, "meta"):
        cond = model.encode_prompts(prompts)
        model.decode(sampler.sample(model, cond, noise))
    return tracer.flops


__all__ = ["CATEGORIES", "StepTrace", "measure_step", "plan_step"]
