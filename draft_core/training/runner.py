"""The training recipe: config -> plugins -> model + LoRA -> loop -> run folder (README: run folder).

The runner knows no concrete sampler, estimator or reward: it builds them by name through the registry.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from draft_core.config import Config
from draft_core.errors import ConfigError
from draft_core.lora import load_lora_state, lora_state, save_lora
from draft_core.lora.card import run_card_info, write_model_card
from draft_core.media import plot_reward_curve
from draft_core.memory import configure_denoiser
from draft_core.models.conditioning import Conditioning
from draft_core.rewarding.contract import CheckedReward
from draft_core.rewarding.spec import reward_label
from draft_core.rundir import RunDir
from draft_core.training.checkpoint import latest_checkpoint, replace_folder, save_checkpoint
from draft_core.training.components import Components, section_label
from draft_core.training.distributed import (
    any_process,
    average_gradients,
    check_launch,
    gather_ranks,
    on_cpu,
    rng_state,
    seed_global_generators,
    set_rng_state,
)
from draft_core.training.ema import WeightsEma
from draft_core.training.faults import (
    REWARD,
    NonFiniteCounter,
    NonFiniteStop,
    family_source,
    nonfinite_message,
    step_failure,
)
from draft_core.training.fsdp import shard_under_fsdp
from draft_core.training.guarding import guard_row, setup_guards, with_best
from draft_core.training.learned_sampling import LearnedSampling, plot_guidance
from draft_core.training.metrics import step_line
from draft_core.training.pictures import RunPictures
from draft_core.training.plugin_state import pack_state, unpack_state
from draft_core.training.preflight import check_rewards_available
from draft_core.training.prompt_cache import offload_prompts
from draft_core.training.provenance import recorded_config
from draft_core.training.restore import restore
from draft_core.training.runlock import RunLock, lock_run_folder
from draft_core.training.schedules import build_lr_scheduler, lr_factor  # noqa: F401 (lr_factor: also importable from here)
from draft_core.training.signals import Interrupted, StopRequest
from draft_core.training.state import to_checkpoint
from draft_core.training.step_parts import metrics_row, micro_batches, nonfinite_verdict, skipped_message, skipped_row
from draft_core.training.stopping import checkpoint_after_stop
from draft_core.training.tracking import Tracking, accelerator_options
from draft_core.training.trainable import build_trainable


class Trainer:
    """setup() loads everything, train() runs the loop; state is checkpointed every N steps.

    Data parallel (``torchrun``/``accelerate launch``): ``train.batch_size`` is the global
    batch. Every process draws the same prompts and noise for the whole batch and takes its
    own slice, so N processes see exactly the samples one process would; gradients are
    averaged with one all-reduce per step. Only the main process writes the run folder.
    """

    def __init__(self, config: Config, run_dir: Path, components: Components, *, progress: bool = True) -> None:
        self.config = recorded_config(config, components)  # a reward given from Python is recorded as such
        self.run = RunDir(run_dir)
        self.run_dir = self.run.path
        self.c = components
        self.progress = progress
        self.step = 0  # completed optimiser steps
        self.saved_step = -1  # the step of the last checkpoint written
        self.rows_step = 0  # the last step whose metrics row is written
        self.skipped: tuple[str, str] | None = None  # the last skipped update's (component, what was non-finite)
        self.nonfinite = NonFiniteCounter(config.train.max_nonfinite)
        self.run_lock: RunLock | None = None  # the main process's, from setup() to the end of train() (or its failure)
        self._agreed = False  # the failure being raised was agreed by every process
        self.tracking = Tracking()
        self._reward: CheckedReward | None = None  # self.c.reward behind the core's checks (the ``reward`` property)
        self._reward_of: Any = None
        # Built by setup():
        self.acc: Any  # accelerate's Accelerator (or draft plan's one-process stand-in)
        self.model: Any  # the model family's wrapper, with the LoRA added
        self.prompt_cache: Any  # encoded prompts when the text encoders are offloaded, else None
        self.params: list[torch.nn.Parameter]  # everything the optimiser trains: the LoRA, then learned hyperparameters
        self.learned: LearnedSampling | None = None
        self.optimizer: torch.optim.Optimizer
        self.lr_scheduler: Any
        self.ema: WeightsEma
        self.pictures: RunPictures
        self.gens: dict[str, torch.Generator]  # the run's random streams: data, noise, estimator
        self.guards: Any  # train.stop_when and lora/best/ (training/guards.py)

    # -- setup ------------------------------------------------------------------
    def make_accelerator(self, cpu: bool) -> Any:
        """The accelerate ``Accelerator`` of the run (``draft plan`` puts a one-process stand-in here)."""
        from accelerate import Accelerator

        try:
            return Accelerator(
                mixed_precision=self.config.train.mixed_precision,
                cpu=cpu,
                **accelerator_options(self.config.train.trackers, self.run_dir),
            )
        except ValueError as exc:
            raise ConfigError(
                f"train.mixed_precision={self.config.train.mixed_precision!r} cannot be used here: {exc}"
            ) from None

    def check_rewards(self) -> None:
        """Each reward's weights are there (``draft plan`` with random reward weights skips it)."""
        check_rewards_available(self.c)

    def load_model(self, device: torch.device, dtype: torch.dtype) -> Any:
        """The configured model with its weights (``draft plan`` builds it on the meta device instead)."""
        from draft_core.models.loading import load_model

        m = self.config.model
        return load_model(m.name, device, dtype, m.revision, m.family, quantize=m.quantize)

    def setup(self, resume: bool = False) -> None:
        from draft_core.models.loading import resolve_dtype

        cfg = self.config
        self.check_rewards()  # before the model loads and the run folder exists
        self.acc = self.make_accelerator(on_cpu(cfg.model.device))
        seed_global_generators(cfg.train.seed, self.acc.process_index)
        if self.acc.is_main_process:  # before the model loads: a second writer is refused at once
            self.run_lock = lock_run_folder(self.run_dir)
        n = check_launch(self.acc, cfg.train.batch_size, self.log)
        device = self.acc.device if cfg.model.device in ("auto", "cpu") else torch.device(cfg.model.device)
        self.model = self.load_model(device, resolve_dtype(cfg.model.dtype, device))
        self.model.set_resolution(cfg.model.resolution)
        self.model.checkpoint_decode = cfg.train.checkpoint_decode
        self.prompt_cache = offload_prompts(self.model, cfg, self.c, self.run_dir, self.acc.is_main_process)
        configure_denoiser(self.model, self.c.estimator, cfg.train.checkpoint_denoiser, cfg.train.batch_size // n)
        trainable = build_trainable(cfg, self.model, self.c.sampler)  # LoRA, learned sampling, AdamW, schedule, EMA
        self.params, self.learned, self.optimizer = trainable.params, trainable.learned, trainable.optimizer
        self.lr_scheduler, self.ema = trainable.lr_scheduler, trainable.ema
        self.reward.to(device)
        t = cfg.train
        self.pictures = RunPictures(cfg, self.run_dir, self.model, self.c, self._condition, self.learned)
        self.sharded = shard_under_fsdp(self)  # an FSDP launch: the frozen base sharded, grids drawn by every process
        rank = self.acc.process_index
        # Separate streams, so a change in one consumer (e.g. the estimator) does not shift the others.
        # Prompts and noise are drawn for the global batch, identically on every process; the estimator's own per process.
        self.gens = {
            name: torch.Generator().manual_seed(t.seed * 1000 + offset + (7919 * rank if name == "estimator" else 0))
            for offset, name in enumerate(("data", "noise", "estimator"))
        }
        if self.acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._restore()
        elif self.acc.is_main_process:
            self.config.dump(self.run.config)
        self.guards = setup_guards(self, resume)  # train.stop_when, lora/best/ (training/guards.py)
        self.acc.wait_for_everyone()

    def _restore(self) -> None:
        restore(self)

    @property
    def reward(self) -> CheckedReward:
        """What estimators call: ``components.reward`` behind the core's checks (rebuilt if it is replaced)."""
        if self._reward is None or self._reward_of is not self.c.reward:
            self._reward, self._reward_of = self.c.checked_reward(), self.c.reward
        return self._reward

    # -- the state ------------------------------------------------------------------
    def state_dict(self, rng: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """The whole training state, nested by part (training/state.py lists them); ``rng``: this process's
        RNG state to record (default: now). A collective: every process calls it, each gets every rank's part."""
        own, numbers = pack_state(
            self.c.estimator.state_dict(), self._estimator_name()
        )  # refused here, on every process
        return {
            "step": self.step,
            "num_processes": self.acc.num_processes,
            "lora": lora_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.lr_scheduler.state_dict(),
            "rng": gather_ranks(self.acc, rng if rng is not None else rng_state(self.gens)),
            "ema": self.ema.state_dict(),
            "learned": {k: v.detach() for k, v in self.learned.state_dict().items()}
            if self.learned is not None
            else {},
            "estimator": gather_ranks(self.acc, unpack_state(own, numbers)),
            "nonfinite": self.nonfinite.state()["nonfinite"],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (``state_dict()``'s, or a checkpoint's through training/state.py)."""
        rank, device = self.acc.process_index, self.model.device
        load_lora_state(self.model, {k: v.to(device) for k, v in state["lora"].items()})
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["scheduler"])
        set_rng_state(self.gens, state["rng"][rank])
        if state["learned"] and self.learned is not None:
            self.learned.load_state_dict({k: v.to(device) for k, v in state["learned"].items()})
        self.ema.load_state_dict(dict(state["ema"]))
        if any(state["estimator"]):  # e.g. ddpo's stored samples: this process's own
            self.c.estimator.load_state_dict(state["estimator"][rank])
        self.nonfinite.load({"nonfinite": state["nonfinite"]})
        self.step = self.saved_step = state["step"]

    def log(self, message: str) -> None:
        if self.acc.is_main_process:
            tqdm.write(message if message.startswith("[draft]") else f"[draft] {message}", file=sys.stderr)

    # -- pieces of a step ---------------------------------------------------------
    def _batch(self) -> tuple[list[str], torch.Tensor]:
        """This process's slice of the global batch (the same prompts and noise on every process)."""
        n, rank = self.acc.num_processes, self.acc.process_index
        B = self.config.train.batch_size
        b = B // n
        idx = torch.randint(len(self.c.prompts), (B,), generator=self.gens["data"]).tolist()[rank * b : (rank + 1) * b]
        noise = self.model.make_noise(B, self.gens["noise"])[rank * b : (rank + 1) * b]
        return [self.c.prompts[i] for i in idx], noise

    def _condition(self, cond: Conditioning) -> Conditioning:
        return cond if self.learned is None else self.learned.condition(cond)

    def _failure(self, error: BaseException | None) -> BaseException:
        """The exception to raise once every process knows that one of them failed."""
        self._agreed = True
        family = family_source(self.model)
        return step_failure(
            error, self.step, self.run_dir, [*self.c.sources, *([(self.model, family)] if family else [])]
        )

    def _estimator_name(self) -> str:
        src = self.c.estimator_source
        return f"{src.describe()}, {section_label(self.config.estimator)}" if src else repr(self.c.estimator)

    def _reward_name(self) -> str:
        return " + ".join(src.describe() for _, src in self.c.sources) or repr(self.c.reward)

    def _estimator_step(self, applied: bool) -> None:
        """The estimator's optional hook, once per optimiser step (GradientEstimator's docstring)."""
        self.c.estimator.on_optimizer_step(applied)

    def train_step(self) -> dict[str, Any]:
        """One optimiser step: the micro-batches, the processes' agreement, then the update and its metrics
        row, or a skipped update's row when something was non-finite."""
        t0 = time.perf_counter()
        tally = micro_batches(self)
        loss, any_error, any_bad_reward, any_bad_loss = average_gradients(self.acc, self.params, tally.scalars())
        if any_error > 0:  # every process raises, at the same step
            self.optimizer.zero_grad(set_to_none=True)
            raise self._failure(tally.error)
        lr = self.optimizer.param_groups[0]["lr"]
        skipped = nonfinite_verdict(any_bad_reward, any_bad_loss, self.params)
        # Everything the row needs is computed before step N counts: a failure here leaves it undone.
        reward = None if skipped else self.acc.gather(torch.cat(tally.rewards))
        self.step += 1
        if skipped:
            return self._skip_update(skipped, lr, t0)
        grad_norm = self._optimizer_step()
        reward = self.acc.gather(torch.cat(tally.rewards))
        return metrics_row(
            self.step, tally, reward, loss, grad_norm, lr, time.perf_counter() - t0, self.acc.num_processes
        )

    def _skip_update(self, skipped: tuple[str, str], lr: float, t0: float) -> dict[str, Any]:
        """No update: the LoRA, the optimiser and the LR schedule stay as they were; the row says why."""
        self.optimizer.zero_grad(set_to_none=True)
        self._estimator_step(False)
        self.nonfinite.skip(self.step, skipped[0])
        self.skipped = skipped
        source = self._reward_name() if skipped[0] == REWARD else self._estimator_name()
        self.log(skipped_message(self.step, skipped, source, self.nonfinite))
        return skipped_row(self.step, skipped, self.nonfinite.total, lr, t0)

    def _optimizer_step(self) -> float:
        """Clip, step the optimiser, the LR schedule and the weight average; the gradient norm before clipping."""
        self.nonfinite.ok()
        clip = self.config.train.grad_clip if self.config.train.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.ema.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._estimator_step(True)
        return grad_norm

    @torch.no_grad()
    def sample_grid(self, tag: str) -> Path | None:
        return self.pictures.grid(tag, self.step, self.tracking) if self.acc.is_main_process or self.sharded else None

    def validate(self) -> dict[str, float]:
        """``val/<reward>`` means when validation is due at this step (main process only), else {}."""
        return self.pictures.validate(self.step, self.tracking) if self.acc.is_main_process or self.sharded else {}

    def save(self, rng: dict[str, torch.Tensor] | None = None) -> None:
        """Checkpoint the state after ``self.step`` completed steps (``rng``: that moment's RNG
        state). Every process calls it at the same step; only the main one writes."""
        if self.step == self.saved_step:
            return
        state = self.state_dict(rng)  # a collective
        if self.acc.is_main_process:
            run = self.run
            save_checkpoint(
                run.checkpoints, to_checkpoint(state, self._estimator_name()), keep=self.config.train.keep_checkpoints
            )
            replace_folder(with_best(self._write_lora_folder, run.lora), run.lora)
            self.ema.write(lambda folder: replace_folder(self._write_lora_folder, folder), run.lora_ema)
            if self.learned is not None and self.learned.guidance is not None:
                plot = plot_guidance(self.learned.guidance, run.guidance_plot, self.title())
                self.tracking.image("guidance_schedule", plot, self.step)
            plot_reward_curve(run.metrics, run.reward_curve, self.title())
        self.saved_step = self.step
        self.acc.wait_for_everyone()

    def _write_lora_folder(self, folder: Path) -> None:
        """The LoRA (diffusers format) and any learned sampler hyperparameters beside it."""
        save_lora(self.model, folder)
        if self.learned is not None:
            self.learned.save(folder)
        write_model_card(folder, run_card_info(self.run_dir), location=self.run.lora)

    def title(self) -> str:
        return f"{self.config.estimator['name']} on {reward_label(self.config.reward)} ({self.config.model.name})"

    def _stop_for_nonfinite(self) -> NonFiniteStop:
        assert self.skipped is not None, "called after a skipped update"
        component, what = self.skipped
        source = self._reward_name() if component == REWARD else self._estimator_name()
        self._agreed = True
        return NonFiniteStop(
            nonfinite_message(
                self.step,
                component,
                what,
                self.nonfinite,
                source,
                latest_checkpoint(self.run.checkpoints),
                self.run_dir,
            )
        )

    # -- the loop -----------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run to ``train.steps``, with the experiment trackers started for the duration."""
        self.tracking = Tracking.start(
            self.acc, self.config, self.run_dir, self.step, self.config.train.tracker_project
        )
        try:
            return self._train()
        finally:
            self.tracking.close()
            if self.run_lock is not None:  # the run folder is free again
                self.run_lock.release()

    def _train(self) -> dict[str, Any]:
        cfg = self.config.train
        if self.step == 0:
            self.sample_grid("step-000000")
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=self.config.estimator["name"],
            unit="step",
            disable=not (self.progress and self.acc.is_main_process),
            dynamic_ncols=True,
        )
        metrics = open(self.run.metrics, "a") if self.acc.is_main_process else None
        rng_done = rng_state(self.gens)  # the RNG state right after the last completed step
        self.rows_step = self.step
        last: dict[str, Any] = {}
        self._agreed = False
        if self.step == 0 and (scores := self.validate()):
            guard_row(self, first := {"step": 0, **scores})
            self.tracking.record(metrics, first)
        try:
            with StopRequest() as stop:
                while self.step < cfg.steps:
                    row = self.train_step()
                    row.update(self.validate())
                    rng_done = rng_state(self.gens)  # after the validation too (a reward there may draw from torch's)
                    guarded = guard_row(self, row)  # notes guard_stop / guard_best in the row
                    self.tracking.record(metrics, row)
                    self.rows_step = self.step
                    bar.update(1)
                    if not self.progress and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                        self.log(step_line(row, cfg.steps))  # no bar: a line every train.log_every steps
                    if "skipped" in row and self.nonfinite.exhausted():
                        raise self._stop_for_nonfinite()
                    if "skipped" not in row:
                        last = row
                        bar.set_postfix(reward=f"{row['reward_mean']:.4g}", s_per_step=f"{row['seconds']:.2f}")
                    if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step < cfg.steps:
                        self.sample_grid(f"step-{self.step:06d}")
                    if self.step % cfg.checkpoint_every == 0:
                        self.save()
                    if any_process(self.acc, guarded):  # a guard fired: stop cleanly, as at the last step
                        break
                    if any_process(self.acc, stop.signal is not None):  # every process stops at the same step
                        self._agreed = True
                        raise Interrupted(stop.signal or "a signal to another process")
        except NonFiniteStop:
            bar.close()
            raise  # the last checkpoint stays as it was
        except (Interrupted, KeyboardInterrupt) as exc:
            bar.close()
            # The last completed step's state, with its RNG, so a resumed run repeats the interrupted step exactly.
            if checkpoint_after_stop(self, rng_done):
                self.log(
                    f"interrupted ({exc or 'SIGINT'}) after step {self.step}; checkpoint kept. Resume with: draft train --resume {self.run_dir}"
                )
            raise
        except BaseException:
            bar.close()
            if self.step > 0 and checkpoint_after_stop(self, rng_done):
                self.log(
                    f"failed after step {self.step}; checkpoint kept. Resume with: draft train --resume {self.run_dir}"
                )
            raise
        finally:
            if metrics:
                metrics.close()
        bar.close()
        self.save()
        final = self.sample_grid(f"step-{self.step:06d}")
        if final is not None and self.pictures.before_after(final, self.step, self.tracking) is not None:
            plot_reward_curve(self.run.metrics, self.run.reward_curve, self.title())
        return last
