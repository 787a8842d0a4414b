"""The training recipe: config -> plugins -> model + LoRA -> loop -> run folder.

Run folder: ``config.yaml`` (resolved), ``metrics.jsonl`` (one row per optimiser step),
``lora/`` (diffusers format, refreshed at each checkpoint), ``samples/`` (grids for fixed
prompts and seeds), ``reward_curve.png``, ``report.html`` (draft_core.report) and
``checkpoints/``. The runner knows no concrete sampler, estimator or reward: it builds them
by name through the registry.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from draft_core.training.checkpoint import TrainingState, latest_checkpoint, load_latest, replace_folder, save_checkpoint
from draft_core.config import Config
from draft_core.errors import ConfigError, DraftError
from draft_core.training.faults import (
    ESTIMATOR, REWARD, NonFiniteCounter, NonFiniteStop, PeerFailed, RewardPluginError, nonfinite_message,
    reward_source, where,
)
from draft_core.lora import add_lora, load_lora_state, lora_state, save_lora
from draft_core.lora.card import run_card_info, write_model_card
from draft_core.media import plot_reward_curve, save_before_after, save_grid
from draft_core.plugins.protocols import StepInputs
from draft_core.report import refresh_report
from draft_core.training.components import Components
from draft_core.training.learned_sampling import LearnedSampling, plot_guidance
from draft_core.training.distributed import all_rng_states, any_process, average_gradients, rng_state, set_rng_state
from draft_core.training.metrics import truncate_metrics
from draft_core.training.signals import Interrupted, StopRequest

LEARNED_PREFIX = "learned_sampling."  # checkpoint keys of the learned sampler hyperparameters


def lr_factor(decay: str):
    if decay == "sqrt":  # the paper's min(10 · step^-0.5, 1), steps counted from 1
        return lambda i: min(10.0 * (i + 1) ** -0.5, 1.0)
    return lambda i: 1.0


class Trainer:
    """setup() loads everything, train() runs the loop; state is checkpointed every N steps.

    Data parallel (``torchrun``/``accelerate launch``): ``train.batch_size`` is the global
    batch. Every process draws the same prompts and noise for the whole batch and takes its
    own slice, so N processes see exactly the samples one process would; gradients are
    averaged with one all-reduce per step. Only the main process writes the run folder.
    """

    def __init__(self, config: Config, run_dir: Path, components: Components, *, progress: bool = True) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.c = components
        self.progress = progress
        self.step = 0
        self.saved_step = -1
        self.learned: LearnedSampling | None = None
        self.nonfinite = NonFiniteCounter(config.train.max_nonfinite)
        self._agreed = False  # the failure being raised was agreed by every process

    # -- setup ------------------------------------------------------------------
    def setup(self, resume: bool = False) -> None:
        from accelerate import Accelerator

        from draft_core.models.loading import load_model, resolve_dtype

        cfg = self.config
        cpu = cfg.model.device == "cpu" or (cfg.model.device == "auto" and not torch.cuda.is_available())
        if cfg.model.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"model.device is {cfg.model.device!r}, but this machine has no CUDA GPU; use auto or cpu.")
        try:
            self.acc = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=cpu)
        except ValueError as exc:
            raise ConfigError(f"train.mixed_precision={cfg.train.mixed_precision!r} cannot be used here: {exc}") from None
        n = self.acc.num_processes
        if self.acc.distributed_type.name in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
            self.log(f"warning: accelerate is set up for {self.acc.distributed_type.name}, but draft does not shard: "
                     f"each process holds the whole frozen base and the LoRA is trained data-parallel (README: Training on several GPUs)")
        if cfg.train.batch_size % n:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} is the global batch, split evenly over the {n} processes; "
                f"give a multiple of {n}."
            )
        device = self.acc.device if cfg.model.device in ("auto", "cpu") else torch.device(cfg.model.device)
        self.model = load_model(cfg.model.name, device, resolve_dtype(cfg.model.dtype, device), cfg.model.revision)
        with torch.random.fork_rng(devices=[]):  # the LoRA's initial A factors depend on the seed only
            torch.manual_seed(cfg.train.seed)
            self.params = add_lora(self.model.unet, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets)
        if hasattr(self.c.reward, "to"):
            self.c.reward.to(device)
        t = cfg.train
        groups = [{"params": self.params}]
        with torch.random.fork_rng(devices=[]):  # the negative prompt's initial weights, likewise
            torch.manual_seed(cfg.train.seed + 1)
            self.learned = LearnedSampling.from_config(cfg.learn, self.model, self.c.sampler)
        if self.learned is not None:  # guidance schedule / negative prompt, trained with the LoRA
            self.learned.attach(self.c.sampler)
            groups += self.learned.param_groups(t.lr, cfg.learn)
            self.params = self.params + list(self.learned.parameters())
        self.optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(t.lr_decay))
        rank = self.acc.process_index
        # Separate streams, so a change in one consumer (e.g. the estimator) does not shift the others.
        # Prompts and noise are drawn for the global batch, identically on every process; the
        # estimator's own randomness is independent per process.
        self.gens = {
            name: torch.Generator().manual_seed(t.seed * 1000 + offset + (7919 * rank if name == "estimator" else 0))
            for offset, name in enumerate(("data", "noise", "estimator"))
        }
        if self.acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._restore()
        elif self.acc.is_main_process:
            self.config.dump(self.run_dir / "config.yaml")
        self.acc.wait_for_everyone()

    def _restore(self) -> None:
        from draft_core.training.checkpoint import CheckpointError

        if latest_checkpoint(self.run_dir / "checkpoints") is None:
            # Stopped before its first checkpoint: start again from step 0 in the same folder.
            self.log(f"--resume {self.run_dir}: no checkpoint yet, so the run starts again from step 0")
            if self.acc.is_main_process:
                truncate_metrics(self.run_dir / "metrics.jsonl", 0)
                self.config.dump(self.run_dir / "config.yaml")
            return
        path, state = load_latest(self.run_dir / "checkpoints", warn=self.log)
        n, rank = self.acc.num_processes, self.acc.process_index
        saved_n = int(state.meta.get("num_processes", 1))
        if saved_n != n:
            raise CheckpointError(
                f"--resume {self.run_dir}: the checkpoint was written by {saved_n} process(es), this run has {n}. "
                f"Resume with {saved_n} (each process's random stream is in the checkpoint)."
            )
        load_lora_state(self.model.unet, {k: v.to(self.model.device) for k, v in state.lora.items()})
        self.optimizer.load_state_dict(state.optimizer)
        self.lr_scheduler.load_state_dict(state.lr_scheduler)
        prefix = f"rank{rank}/"
        rng = state.rng if rank == 0 else {k[len(prefix):]: v for k, v in state.rng.items() if k.startswith(prefix)}
        set_rng_state(self.gens, rng)
        extra = dict(state.extra or {})
        learned = {k[len(LEARNED_PREFIX):]: extra.pop(k) for k in list(extra) if k.startswith(LEARNED_PREFIX)}
        if learned and self.learned is not None:
            self.learned.load_state_dict({k: v.to(self.model.device) for k, v in learned.items()})
        if extra and hasattr(self.c.estimator, "load_state_dict"):
            self.c.estimator.load_state_dict(extra)
        self.nonfinite.load(state.meta)
        self.step = self.saved_step = state.step
        if self.acc.is_main_process:
            truncate_metrics(self.run_dir / "metrics.jsonl", state.step)
            self.config.dump(self.run_dir / "config.yaml")
        self.log(f"resumed from {path} (step {state.step})")

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

    def _condition(self, cond):
        return cond if self.learned is None else self.learned.condition(cond)

    def _failure(self, error: BaseException | None) -> BaseException:
        """The exception to raise once every process knows that one of them failed."""
        self._agreed = True
        if error is None:
            return PeerFailed(f"another process failed during step {self.step + 1} (its error is in its log); all processes stopped.")
        if isinstance(error, DraftError):
            return error
        src = reward_source(error, self.c.sources)
        if src is None:
            return error
        kept = (f"the state after step {self.step} (the last completed step) is checkpointed" if self.step
                else "no step had completed, so there is no checkpoint")
        err = RewardPluginError(
            f"step {self.step + 1}: {src.describe()} raised {type(error).__name__}: {error} (at {where(error)}). "
            f"The run stopped; {kept}. Fix or update that plugin, then continue with "
            f"`draft train --resume {self.run_dir}`."
        )
        err.__cause__ = error
        return err

    def _reward_name(self) -> str:
        return " + ".join(src.describe() for _, src in self.c.sources) or repr(self.c.reward)

    def train_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        cfg = self.config.train
        rewards, losses, logs = [], [], {}
        queries = 1
        bad_reward = bad_loss = False
        error: BaseException | None = None
        for _ in range(cfg.grad_accum):
            prompts, noise = self._batch()
            cond = self._condition(self.model.encode_prompts(prompts))
            inputs = StepInputs(self.model, self.c.sampler, self.c.reward, cond, noise, self.gens["estimator"])
            try:
                with self.acc.autocast():
                    out = self.c.estimator(inputs)
            except Interrupted:
                raise
            except Exception as exc:  # decided on below, together with the other processes
                error = exc
                break
            if not torch.isfinite(out.reward).all():
                bad_reward = True
                break
            if not torch.isfinite(out.loss):
                bad_loss = True
                break
            (out.loss / cfg.grad_accum).backward()
            rewards.append(out.reward.float())
            losses.append(out.loss.item())
            queries = out.queries
            for k, v in out.logs.items():
                logs[k] = logs.get(k, 0.0) + v / cfg.grad_accum
            for k, v in getattr(self.c.reward, "last_terms", {}).items():
                logs[f"reward/{k}"] = logs.get(f"reward/{k}", 0.0) + v.float().mean().item() / cfg.grad_accum
        local_loss = sum(losses) / len(losses) if losses else 0.0
        loss, any_error, any_bad_reward, any_bad_loss = average_gradients(self.acc, self.params, 
            [local_loss, float(error is not None), float(bad_reward), float(bad_loss)]
        )
        if any_error > 0:
            self.optimizer.zero_grad(set_to_none=True)
            raise self._failure(error)
        lr = self.optimizer.param_groups[0]["lr"]
        skipped = None
        if any_bad_reward > 0:
            skipped = (REWARD, "non-finite reward values (NaN or inf)")
        elif any_bad_loss > 0:
            skipped = (ESTIMATOR, "a non-finite loss")
        elif not all(torch.isfinite(p.grad).all() for p in self.params if p.grad is not None):
            skipped = (ESTIMATOR, "non-finite gradients")
        self.step += 1
        if skipped:
            # No update: the LoRA, the optimiser and the LR schedule stay as they were.
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite.skip(self.step, skipped[0])
            self.skipped = skipped
            self.log(f"step {self.step}: {skipped[0]} produced {skipped[1]}; update skipped "
                     f"({self.nonfinite.streak} in a row, {self.nonfinite.total} in this run)")
            return {
                "step": self.step, "skipped": skipped[0], "reason": skipped[1], "reward_mean": None,
                "nonfinite_total": self.nonfinite.total, "lr": lr, "seconds": time.perf_counter() - t0,
            }
        self.nonfinite.ok()
        clip = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        reward = self.acc.gather(torch.cat(rewards))
        return {
            "step": self.step,
            "reward_mean": reward.mean().item(),
            "reward_std": reward.std().item() if reward.numel() > 1 else 0.0,
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": lr,
            "seconds": time.perf_counter() - t0,
            "reward_queries": queries * reward.numel(),
            **logs,
        }

    @torch.no_grad()
    def sample_grid(self, tag: str) -> Path | None:
        if not self.acc.is_main_process:
            return None
        t = self.config.train
        base = t.sample_prompts or self.c.prompts[:10]
        prompts = [p for _ in range(t.sample_per_prompt) for p in base]  # one row per seed
        gen = torch.Generator().manual_seed(t.seed)  # the same noise in every grid
        noise = self.model.make_noise(len(prompts), gen)
        images = []
        for i in range(0, len(prompts), 8):
            cond = self._condition(self.model.encode_prompts(prompts[i : i + 8]))
            x = self.c.sampler.sample(self.model, cond, noise[i : i + 8], generator=gen)
            images.append(self.model.decode(x))
        path = save_grid(torch.cat(images), self.run_dir / "samples" / f"{tag}.png", nrow=len(base))
        refresh_report(self.run_dir, self.log)  # report.html shows every grid: rewritten with each new one
        return path

    def save(self, rng: dict[str, torch.Tensor] | None = None) -> None:
        """Checkpoint the state after ``self.step`` completed steps (``rng``: that moment's RNG
        state). Every process calls it at the same step; only the main one writes."""
        if self.step == self.saved_step:
            return
        rng = all_rng_states(self.acc, rng if rng is not None else rng_state(self.gens))
        if self.acc.is_main_process:
            extra = dict(self.c.estimator.state_dict()) if hasattr(self.c.estimator, "state_dict") else {}
            if self.learned is not None:
                extra.update({LEARNED_PREFIX + k: v.detach() for k, v in self.learned.state_dict().items()})
            state = TrainingState(
                step=self.step,
                lora=lora_state(self.model.unet),
                optimizer=self.optimizer.state_dict(),
                lr_scheduler=self.lr_scheduler.state_dict(),
                rng=rng,
                extra=extra or None,
                meta={"num_processes": self.acc.num_processes, **self.nonfinite.state()},
            )
            save_checkpoint(self.run_dir / "checkpoints", state, keep=self.config.train.keep_checkpoints)
            replace_folder(self._write_lora_folder, self.run_dir / "lora")
            if self.learned is not None and self.learned.guidance is not None:
                plot_guidance(self.learned.guidance, self.run_dir / "guidance_schedule.png", self.title())
            plot_reward_curve(self.run_dir / "metrics.jsonl", self.run_dir / "reward_curve.png", self.title())
        self.saved_step = self.step
        self.acc.wait_for_everyone()

    def _write_lora_folder(self, folder: Path) -> None:
        """The LoRA (diffusers format) and any learned sampler hyperparameters beside it."""
        save_lora(self.model.unet, folder)
        if self.learned is not None:
            self.learned.save(folder)
        write_model_card(folder, run_card_info(self.run_dir))

    def title(self) -> str:
        reward = self.config.reward.get("name") or "+".join(self.config.reward.get("weights", {}))
        return f"{self.config.estimator['name']} on {reward} ({self.config.model.name})"

    def _stop_for_nonfinite(self) -> NonFiniteStop:
        component, what = self.skipped
        source = self._reward_name() if component == REWARD else repr(self.c.estimator)
        self._agreed = True
        return NonFiniteStop(nonfinite_message(
            self.step, component, what, self.nonfinite, source,
            latest_checkpoint(self.run_dir / "checkpoints"), self.run_dir,
        ))

    # -- the loop -----------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg = self.config.train
        if self.step == 0:
            self.sample_grid("step-000000")
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc=self.config.estimator["name"], unit="step",
            disable=not (self.progress and self.acc.is_main_process), dynamic_ncols=True,
        )
        metrics = open(self.run_dir / "metrics.jsonl", "a") if self.acc.is_main_process else None
        rng_done = rng_state(self.gens)  # the RNG state right after the last completed step
        last: dict[str, Any] = {}
        self._agreed = False
        try:
            with StopRequest() as stop:
                while self.step < cfg.steps:
                    row = self.train_step()
                    rng_done = rng_state(self.gens)
                    if metrics:
                        metrics.write(json.dumps(row) + "\n")
                        metrics.flush()
                    bar.update(1)
                    if "skipped" in row:
                        if self.nonfinite.exhausted():
                            raise self._stop_for_nonfinite()
                    else:
                        last = row
                        bar.set_postfix(reward=f"{row['reward_mean']:.4g}", s_per_step=f"{row['seconds']:.2f}")
                    if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step < cfg.steps:
                        self.sample_grid(f"step-{self.step:06d}")
                    if self.step % cfg.checkpoint_every == 0:
                        self.save()
                    if any_process(self.acc, stop.signal is not None):  # every process stops at the same step
                        self._agreed = True
                        raise Interrupted(stop.signal or "a signal to another process")
        except NonFiniteStop:
            bar.close()
            raise  # the last checkpoint stays as it was
        except (Interrupted, KeyboardInterrupt) as exc:
            bar.close()
            # The state is that of the last completed step, with the RNG as it was then, so a
            # resumed run repeats the interrupted step exactly.
            if self._save_is_safe():
                self.save(rng=rng_done)
                self.log(f"interrupted ({exc or 'SIGINT'}) after step {self.step}; checkpoint kept. "
                         f"Resume with: draft train --resume {self.run_dir}")
            raise
        except BaseException:
            bar.close()
            if self.step > 0 and self._save_is_safe():
                self.save(rng=rng_done)
                self.log(f"failed after step {self.step}; checkpoint kept. Resume with: draft train --resume {self.run_dir}")
            raise
        finally:
            if metrics:
                metrics.close()
        bar.close()
        self.save()
        final = self.sample_grid(f"step-{self.step:06d}")
        if final is not None and (self.run_dir / "samples" / "step-000000.png").exists():
            save_before_after(self.run_dir / "samples" / "step-000000.png", final, self.run_dir / "samples" / "before_after.png")
            plot_reward_curve(self.run_dir / "metrics.jsonl", self.run_dir / "reward_curve.png", self.title())
        return last

    def _save_is_safe(self) -> bool:
        """A checkpoint is a collective: with several processes, write one only when every
        process stopped at the same agreed point; otherwise the last periodic one is kept."""
        if self.acc.num_processes == 1 or self._agreed:
            return True
        latest = latest_checkpoint(self.run_dir / "checkpoints")
        self.log(f"stopped outside a synchronised point, so no new checkpoint; the last one ({latest}) is kept.")
        return False
