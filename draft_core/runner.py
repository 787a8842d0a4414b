"""The training recipe: config -> plugins -> model + LoRA -> loop -> run folder.

Run folder: ``config.yaml`` (resolved), ``metrics.jsonl`` (one row per optimiser step),
``lora/`` (diffusers format, refreshed at each checkpoint), ``samples/`` (grids for fixed
prompts and seeds), ``reward_curve.png`` and ``checkpoints/``. The runner knows no
concrete sampler, estimator or reward: it builds them by name through the registry.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from draft_core.checkpoint import TrainingState, latest_checkpoint, load_checkpoint, save_checkpoint
from draft_core.config import Config, plugin_kwargs
from draft_core.errors import ConfigError, DraftError
from draft_core.lora import add_lora, load_lora_state, lora_state, save_lora
from draft_core.lora_tools import run_card_info, write_model_card
from draft_core.media import plot_reward_curve, save_before_after, save_grid
from draft_core.plugins import Registry, load_registry
from draft_core.prompts import load_prompts
from draft_core.protocols import StepInputs
from draft_core.reward_sum import WeightedReward


class Interrupted(Exception):
    """Raised inside the loop on SIGINT/SIGTERM so the run can checkpoint and exit cleanly."""


@dataclass
class Components:
    sampler: Any
    estimator: Any
    reward: Any
    prompts: list[str]


def build_reward(section: dict, registry: Registry):
    if "weights" in section:
        args = section.get("args") or {}
        unknown = sorted(set(args) - set(section["weights"]))
        if unknown:
            raise ConfigError(f"reward.args names {unknown}, which are not in reward.weights {sorted(section['weights'])}.")
        terms = {
            name: (_construct(registry, "reward", name, args.get(name) or {}, f"reward.args.{name}"), float(w))
            for name, w in section["weights"].items()
        }
        return WeightedReward(terms)
    return _build_plugin(registry, "reward", section)


def build_components(config: Config, registry: Registry | None = None) -> Components:
    """Resolve every name and argument of the config; loads no model weights."""
    registry = registry or load_registry()
    sampler = _build_plugin(registry, "sampler", config.sampler)
    section = dict(config.estimator)
    kl = section.pop("kl", None)  # a wrapper around any estimator, not one of its arguments
    estimator = _build_plugin(registry, "estimator", section)
    if kl is not None:
        from draft_estimators.kl import KLRegularized

        estimator = KLRegularized(estimator, kl)
    reward = build_reward(config.reward, registry)
    if hasattr(estimator, "check"):
        estimator.check(sampler)
    prompts = load_prompts(config.prompts.source, config.prompts.items, config.prompts.template)
    return Components(sampler, estimator, reward, prompts)


def _build_plugin(registry: Registry, kind: str, section: dict):
    name, kwargs = plugin_kwargs(section)
    return _construct(registry, kind, name, kwargs, kind)


def _construct(registry: Registry, kind: str, name: str, kwargs: dict, key: str):
    try:
        return registry.build(kind, name, **kwargs)
    except DraftError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        # A factory rejecting a value is an input error: say which plugin and which arguments.
        raise ConfigError(f"{kind} '{name}' rejected its arguments {kwargs} (config section '{key}'): {exc}") from exc


def lr_factor(decay: str):
    if decay == "sqrt":  # the paper's min(10 · step^-0.5, 1), steps counted from 1
        return lambda i: min(10.0 * (i + 1) ** -0.5, 1.0)
    return lambda i: 1.0


class _StopRequest:
    """SIGINT/SIGTERM (Ctrl-C, schedulers, preemption) ask the loop to stop after the current
    step, so the checkpoint is exact; a second signal stops at once."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if self.signal is not None:
            raise Interrupted(signal.Signals(signum).name)
        self.signal = signal.Signals(signum).name
        tqdm.write("[draft] stopping after this step (signal again to stop now)", file=sys.stderr)

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, h in self._previous.items():
            signal.signal(sig, h)


class Trainer:
    """setup() loads everything, train() runs the loop; state is checkpointed every N steps."""

    def __init__(self, config: Config, run_dir: Path, components: Components, *, progress: bool = True) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.c = components
        self.progress = progress
        self.step = 0
        self.saved_step = -1

    # -- setup ------------------------------------------------------------------
    def setup(self, resume: bool = False) -> None:
        from accelerate import Accelerator

        from draft_core.models.loading import load_model, resolve_dtype

        cfg = self.config
        cpu = cfg.model.device == "cpu" or (cfg.model.device == "auto" and not torch.cuda.is_available())
        self.acc = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=cpu)
        device = self.acc.device if cfg.model.device in ("auto", "cpu") else torch.device(cfg.model.device)
        self.model = load_model(cfg.model.name, device, resolve_dtype(cfg.model.dtype, device), cfg.model.revision)
        with torch.random.fork_rng(devices=[]):  # the LoRA's initial A factors depend on the seed only
            torch.manual_seed(cfg.train.seed)
            self.params = add_lora(self.model.unet, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets)
        if hasattr(self.c.reward, "to"):
            self.c.reward.to(device)
        t = cfg.train
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(t.lr_decay))
        rank = self.acc.process_index
        # Separate streams, so a change in one consumer (e.g. the estimator) does not shift the others.
        self.gens = {
            name: torch.Generator().manual_seed(t.seed * 1000 + offset + 7919 * rank)
            for offset, name in enumerate(("data", "noise", "estimator"))
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._restore()
        elif self.acc.is_main_process:
            self.config.dump(self.run_dir / "config.yaml")

    def _rng_state(self) -> dict[str, torch.Tensor]:
        state = {f"gen_{k}": g.get_state() for k, g in self.gens.items()}
        state["torch_cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                state[f"torch_cuda_{i}"] = s
        return state

    def _set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        for k, g in self.gens.items():
            g.set_state(state[f"gen_{k}"])
        torch.set_rng_state(state["torch_cpu"])
        cuda = [state[k] for k in sorted(state) if k.startswith("torch_cuda_")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)

    def _restore(self) -> None:
        path = latest_checkpoint(self.run_dir / "checkpoints")
        if path is None:
            raise DraftError(f"--resume {self.run_dir}: no checkpoint in {self.run_dir / 'checkpoints'} to resume from.")
        state = load_checkpoint(path)
        load_lora_state(self.model.unet, {k: v.to(self.model.device) for k, v in state.lora.items()})
        self.optimizer.load_state_dict(state.optimizer)
        self.lr_scheduler.load_state_dict(state.lr_scheduler)
        self._set_rng_state(state.rng)
        if state.extra and hasattr(self.c.estimator, "load_state_dict"):
            self.c.estimator.load_state_dict(state.extra)
        self.step = self.saved_step = state.step
        # Rows logged after the checkpoint belong to steps that will run again.
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():
            rows = [r for r in metrics.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= state.step]
            metrics.write_text("".join(r + "\n" for r in rows))
        if self.acc.is_main_process:
            self.config.dump(self.run_dir / "config.yaml")
        self.log(f"resumed from {path} (step {state.step})")

    def log(self, message: str) -> None:
        if self.acc.is_main_process:
            tqdm.write(f"[draft] {message}", file=sys.stderr)

    # -- pieces of a step ---------------------------------------------------------
    def _batch(self) -> tuple[list[str], torch.Tensor]:
        b = self.config.train.batch_size
        idx = torch.randint(len(self.c.prompts), (b,), generator=self.gens["data"]).tolist()
        prompts = [self.c.prompts[i] for i in idx]
        return prompts, self.model.make_noise(b, self.gens["noise"])

    def _sync_gradients(self) -> None:
        if self.acc.num_processes == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.acc.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def train_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        cfg = self.config.train
        rewards, losses, logs = [], [], {}
        queries = 1
        for _ in range(cfg.grad_accum):
            prompts, noise = self._batch()
            cond = self.model.encode_prompts(prompts)
            inputs = StepInputs(self.model, self.c.sampler, self.c.reward, cond, noise, self.gens["estimator"])
            with self.acc.autocast():
                out = self.c.estimator(inputs)
            if not torch.isfinite(out.loss):
                raise DraftError(
                    f"the loss became {out.loss.item()} at step {self.step + 1}. The last checkpoint is kept; "
                    f"lower train.lr or set train.grad_clip, then resume with `draft train --resume {self.run_dir}`."
                )
            (out.loss / cfg.grad_accum).backward()
            rewards.append(out.reward.float())
            losses.append(out.loss.item())
            queries = out.queries
            for k, v in out.logs.items():
                logs[k] = logs.get(k, 0.0) + v / cfg.grad_accum
            for k, v in getattr(self.c.reward, "last_terms", {}).items():
                logs[f"reward/{k}"] = logs.get(f"reward/{k}", 0.0) + v.float().mean().item() / cfg.grad_accum
        self._sync_gradients()
        clip = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        reward = self.acc.gather(torch.cat(rewards))
        self.step += 1
        return {
            "step": self.step,
            "reward_mean": reward.mean().item(),
            "reward_std": reward.std().item() if reward.numel() > 1 else 0.0,
            "loss": sum(losses) / len(losses),
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
            cond = self.model.encode_prompts(prompts[i : i + 8])
            x = self.c.sampler.sample(self.model, cond, noise[i : i + 8], generator=gen)
            images.append(self.model.decode(x))
        return save_grid(torch.cat(images), self.run_dir / "samples" / f"{tag}.png", nrow=len(base))

    def save(self, rng: dict[str, torch.Tensor] | None = None) -> None:
        """Checkpoint the state after ``self.step`` completed steps (``rng``: that moment's RNG state)."""
        if self.step == self.saved_step:
            return
        if self.acc.is_main_process:
            extra = self.c.estimator.state_dict() if hasattr(self.c.estimator, "state_dict") else None
            state = TrainingState(
                step=self.step,
                lora=lora_state(self.model.unet),
                optimizer=self.optimizer.state_dict(),
                lr_scheduler=self.lr_scheduler.state_dict(),
                rng=rng if rng is not None else self._rng_state(),
                extra=extra,
            )
            save_checkpoint(self.run_dir / "checkpoints", state, keep=self.config.train.keep_checkpoints)
            save_lora(self.model.unet, self.run_dir / "lora")
            write_model_card(self.run_dir / "lora", run_card_info(self.run_dir))
            plot_reward_curve(self.run_dir / "metrics.jsonl", self.run_dir / "reward_curve.png", self.title())
        self.saved_step = self.step
        self.acc.wait_for_everyone()

    def title(self) -> str:
        reward = self.config.reward.get("name") or "+".join(self.config.reward.get("weights", {}))
        return f"{self.config.estimator['name']} on {reward} ({self.config.model.name})"

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
        rng_done = self._rng_state()  # the RNG state right after the last completed step
        last: dict[str, Any] = {}
        try:
            with _StopRequest() as stop:
                while self.step < cfg.steps:
                    last = self.train_step()
                    rng_done = self._rng_state()
                    if metrics:
                        metrics.write(json.dumps(last) + "\n")
                        metrics.flush()
                    bar.update(1)
                    bar.set_postfix(reward=f"{last['reward_mean']:.4g}", s_per_step=f"{last['seconds']:.2f}")
                    if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step < cfg.steps:
                        self.sample_grid(f"step-{self.step:06d}")
                    if self.step % cfg.checkpoint_every == 0:
                        self.save()
                    if stop.signal:
                        raise Interrupted(stop.signal)
        except (Interrupted, KeyboardInterrupt) as exc:
            bar.close()
            # The state is that of the last completed step, with the RNG as it was then, so a
            # resumed run repeats the interrupted step exactly.
            self.save(rng=rng_done)
            self.log(f"interrupted ({exc or 'SIGINT'}) after step {self.step}; checkpoint kept. "
                     f"Resume with: draft train --resume {self.run_dir}")
            raise
        except BaseException:
            bar.close()
            if self.step > 0:
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
