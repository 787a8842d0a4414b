"""The parts of one training step that need no trainer state of their own: the micro-batches
(``train.grad_accum`` estimator calls) and what they gather, the verdict on whether the update may be
applied, and the metrics row, or the row and log line of a skipped update (``Trainer.train_step`` puts
the pieces together)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from draft_core.plugins.protocols import StepInputs
from draft_core.training.faults import ESTIMATOR, REWARD, NonFiniteCounter, WatchedReward, check_estimator_output
from draft_core.training.signals import Interrupted


@dataclass
class StepTally:
    """This process's micro-batches so far: rewards, losses, the estimator's and reward's logs (each
    averaged over ``grad_accum``), reward queries; and what stopped them early, if anything."""

    grad_accum: int
    rewards: list[torch.Tensor] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    logs: dict[str, float] = field(default_factory=dict)
    queries: int = 0  # reward evaluations of this process's calls (a call reusing stored samples makes none)
    error: BaseException | None = None  # an exception, decided on together with the other processes
    bad_reward: bool = False
    bad_loss: bool = False

    def add(self, out: Any, reward_terms: dict[str, torch.Tensor]) -> None:
        """One micro-batch's estimator output, and the reward's terms of its last call."""
        self.rewards.append(out.reward.float())
        self.losses.append(out.loss.item())
        self.queries += out.queries * out.reward.numel()
        for k, v in out.logs.items():
            self.logs[k] = self.logs.get(k, 0.0) + v / self.grad_accum
        for k, t in reward_terms.items():
            self.logs[f"reward/{k}"] = self.logs.get(f"reward/{k}", 0.0) + t.float().mean().item() / self.grad_accum

    def scalars(self) -> list[float]:
        """What the processes average with the gradients: the mean loss, and the three flags."""
        loss = sum(self.losses) / len(self.losses) if self.losses else 0.0
        return [loss, float(self.error is not None), float(self.bad_reward), float(self.bad_loss)]


def nonfinite_verdict(
    any_bad_reward: float, any_bad_loss: float, params: list[torch.nn.Parameter]
) -> tuple[str, str] | None:
    """(the component to blame, what was non-finite) when the update must be skipped, else None."""
    if any_bad_reward > 0:
        return (REWARD, "non-finite reward values (NaN or inf)")
    if any_bad_loss > 0:
        return (ESTIMATOR, "a non-finite loss")
    if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
        return (ESTIMATOR, "non-finite gradients")
    return None


def metrics_row(
    step: int,
    tally: StepTally,
    reward: torch.Tensor,
    loss: float,
    grad_norm: float,
    lr: float,
    seconds: float,
    processes: int,
) -> dict[str, Any]:
    """An applied update's metrics.jsonl row (``reward``: every process's rewards; ``lr``: the step's, before
    the schedule moved it)."""
    return {
        "step": step,
        "reward_mean": reward.mean().item(),
        "reward_std": reward.std().item() if reward.numel() > 1 else 0.0,
        "loss": loss,
        "grad_norm": grad_norm,
        "lr": lr,
        "seconds": seconds,
        "reward_queries": tally.queries * processes,
        **tally.logs,
    }


def micro_batches(trainer: Any) -> StepTally:
    """``train.grad_accum`` estimator calls of ``trainer``, their gradients summed; the first failure or
    non-finite value ends them (``Trainer.train_step`` and the other processes decide what it means)."""
    cfg = trainer.config.train
    tally = StepTally(cfg.grad_accum)
    reward_fn = WatchedReward(trainer.reward, cfg.checkpoint_reward)  # behind the core's checks

    def backward(part: torch.Tensor) -> None:  # for estimators that run their own backward passes
        (part / cfg.grad_accum).backward()

    for _ in range(cfg.grad_accum):
        prompts, noise = trainer._batch()
        try:
            cond = trainer._condition(trainer.model.encode_prompts(prompts))  # a plugin family's errors are named too
            inputs = StepInputs(
                trainer.model, trainer.c.sampler, reward_fn, cond, noise, trainer.gens["estimator"], backward
            )
            with trainer.acc.autocast():
                out = trainer.c.estimator(inputs)
            check_estimator_output(out, len(prompts), trainer._estimator_name())
        except Interrupted:
            raise
        except Exception as exc:  # decided on together with the other processes
            tally.error = exc
            break
        if not torch.isfinite(out.reward).all() or reward_fn.returned_nonfinite():
            tally.bad_reward = True
            break
        if not torch.isfinite(out.loss):
            tally.bad_loss = True
            break
        if not out.backward_done:
            (out.loss / cfg.grad_accum).backward()
        tally.add(out, trainer.reward.last_terms)
    return tally


def skipped_message(step: int, skipped: tuple[str, str], source: str, counter: NonFiniteCounter) -> str:
    """The log line of an update skipped because ``skipped`` = (component, what it produced)."""
    culprit = f"the reward ({source})" if skipped[0] == REWARD else f"the estimator ({source})"
    return (
        f"step {step}: {culprit} produced {skipped[1]}; update skipped "
        f"({counter.streak} in a row, {counter.total} in this run)"
    )


def skipped_row(step: int, skipped: tuple[str, str], nonfinite_total: int, lr: float, t0: float) -> dict[str, Any]:
    """The metrics row of a skipped update: no reward, the reason, the run's count of them."""
    return {
        "step": step,
        "skipped": skipped[0],
        "reason": skipped[1],
        "reward_mean": None,
        "nonfinite_total": nonfinite_total,
        "lr": lr,
        "seconds": time.perf_counter() - t0,
    }
