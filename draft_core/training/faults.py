"""What the training loop does when luck or a plugin goes bad: non-finite values, raising
rewards, and processes that must agree before they stop.

Non-finite reward or gradient: the update is skipped and counted; ``train.max_nonfinite``
skipped updates in a row stop the run (the last checkpoint stays as it was). A reward that
raises stops the run with a message naming the plugin and the distribution that provides
it. With several processes every such decision is taken on all-reduced flags, so all
processes stop at the same step and no process waits forever in a collective.

A non-finite value from any reward call of a step (the reported rewards, or a call whose
value only reaches the loss, such as DRaFT-LV's re-noised copies) is the reward's fault,
however the estimator used it: ``WatchedReward`` notes it, and the skip names the reward.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from draft_core.errors import DraftError
from draft_core.memory import CheckpointedReward
from draft_core.plugins.registry import describe_provider
from draft_core.rewarding.contract import RewardContractError

REWARD, ESTIMATOR = "reward", "estimator"


class NonFiniteStop(DraftError):
    """Too many non-finite updates in a row."""


class RewardPluginError(DraftError):
    """A reward plugin raised during training."""


class FamilyPluginError(DraftError):
    """A model family plugin's method (encode_prompts, denoise, decode, ...) raised during training."""


class EstimatorContractError(DraftError):
    """An estimator returned something other than what ``EstimatorOutput`` promises."""


def check_estimator_output(out: Any, batch: int, label: str) -> None:
    """Raise EstimatorContractError unless ``out`` is an EstimatorOutput with a scalar loss and a reward [batch]."""
    import torch

    from draft_core.plugins.protocols import EstimatorOutput

    problem = ""
    if not isinstance(out, EstimatorOutput):
        problem = f"returned {type(out).__name__}, not an EstimatorOutput"
    elif not (isinstance(out.loss, torch.Tensor) and out.loss.ndim == 0):
        shape = list(out.loss.shape) if isinstance(out.loss, torch.Tensor) else type(out.loss).__name__
        problem = f"returned a loss of shape {shape}, not a scalar tensor"
    elif not (isinstance(out.reward, torch.Tensor) and out.reward.shape == (batch,)):
        shape = list(out.reward.shape) if isinstance(out.reward, torch.Tensor) else type(out.reward).__name__
        problem = f"returned rewards of shape {shape}, not [{batch}] (one per image of the batch)"
    if problem:
        raise EstimatorContractError(f"{label} {problem}; see EstimatorOutput in draft_core.protocols.")


class WatchedReward(CheckpointedReward):
    """The reward an estimator calls during a step, noting whether any call returned a
    non-finite value (a flag tensor, so no call waits for the device). The flag says "all
    finite", the question ``isfinite(x).all()`` asks: on the meta device (draft plan) a read
    boolean answers True, and the planned step must go on to its update."""

    def __init__(self, reward: object, mode: bool | str = "auto") -> None:
        super().__init__(reward, mode)
        self.flag: torch.Tensor | None = None

    def __call__(self, images: torch.Tensor, prompts: object) -> torch.Tensor:
        out: torch.Tensor = super().__call__(images, prompts)
        finite = torch.isfinite(out.detach()).all()
        self.flag = finite if self.flag is None else self.flag & finite
        return out

    def returned_nonfinite(self) -> bool:
        return self.flag is not None and not bool(self.flag)


class PeerFailed(DraftError):
    """Another process of a data-parallel run failed; its own error is in its log."""


@dataclass(frozen=True)
class Source:
    """Who provides a reward (or another plugin ``kind``): its registered name, plugin module and distribution."""

    name: str
    plugin: str
    distribution: str | None
    version: str | None
    kind: str = "reward"

    def describe(self) -> str:
        return describe_provider(self.kind, self.name, self.plugin, self.distribution, self.version)


def reward_source(exc: BaseException, terms: Sequence[tuple[object, Source]]) -> Source | None:
    """The reward whose code raised ``exc``: the innermost traceback frame that is a method of
    one of the reward objects in ``terms`` or runs in the module that defines it."""
    by_id = {id(obj): src for obj, src in terms}
    by_module: dict[str, Source] = {}
    for obj, src in terms:
        module = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None)
        if module and module != "builtins":
            by_module.setdefault(module, src)
    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in by_id:
            return by_id[id(owner)]
        found = by_module.get(str(frame.f_globals.get("__name__")))
        if found is not None:
            return found
    return None


def family_source(model: object) -> Source | None:
    """Who provides ``model``'s family, when an outside plugin does (a built-in family's errors are the
    core's own, and an error of a sampler or estimator passes through the family's frames too)."""
    from draft_core.plugins import BUILTIN_DISTRIBUTION, load_registry, normalise_distribution

    for entry in load_registry().entries("model"):
        if isinstance(entry.factory, type) and type(model) is entry.factory:
            builtin = normalise_distribution(entry.distribution or "") == normalise_distribution(BUILTIN_DISTRIBUTION)
            return None if builtin else Source(entry.name, entry.plugin, entry.distribution, entry.version, "model")
    return None


def step_failure(
    error: BaseException | None, step: int, run_dir: Path, sources: Sequence[tuple[object, Source]]
) -> BaseException:
    """What to raise when step ``step + 1`` failed with ``error`` (None: on another process): a
    plugin's breach of the contract or a raising reward plugin becomes one paragraph naming it."""
    if error is None:
        return PeerFailed(
            f"another process failed during step {step + 1} (its error is in its log); all processes stopped."
        )
    kept = (
        f"the state after step {step} (the last completed step) is checkpointed"
        if step
        else "no step had completed, so there is no checkpoint"
    )
    then = "Fix or update that plugin, then " + (
        f"continue with `draft train --resume {run_dir}`." if step else "run it again."
    )
    if isinstance(error, (RewardContractError, EstimatorContractError)):
        return type(error)(f"step {step + 1}: {error} The run stopped before this step's update; {kept}. {then}")
    if isinstance(error, DraftError):
        return error
    src = reward_source(error, sources)
    if src is None:
        return error
    err = (FamilyPluginError if src.kind == "model" else RewardPluginError)(
        f"step {step + 1}: {src.describe()} raised {type(error).__name__}: {error} (at {where(error)}). "
        f"The run stopped; {kept}. {then}"
    )
    err.__cause__ = error
    return err


def where(exc: BaseException) -> str:
    """``file:line in function`` of the innermost frame of ``exc``."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return "unknown location"
    last = tb[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


@dataclass
class NonFiniteCounter:
    """Skipped updates: ``total`` over the run, ``streak`` in a row, and the streak's first step."""

    limit: int
    total: int = 0
    streak: int = 0
    first: int = 0
    by: dict[str, int] = field(default_factory=dict)

    def ok(self) -> None:
        self.streak = 0

    def skip(self, step: int, component: str) -> None:
        self.total += 1
        self.by[component] = self.by.get(component, 0) + 1
        if self.streak == 0:
            self.first = step
        self.streak += 1

    def state(self) -> dict[str, Any]:
        return {"nonfinite": {"total": self.total, "streak": self.streak, "first": self.first, "by": self.by}}

    def load(self, meta: dict[str, Any]) -> None:
        saved = meta.get("nonfinite") or {}
        self.total, self.streak = int(saved.get("total", 0)), int(saved.get("streak", 0))
        self.first, self.by = int(saved.get("first", 0)), dict(saved.get("by", {}))

    def exhausted(self) -> bool:
        return self.streak >= self.limit


def nonfinite_message(
    step: int, component: str, what: str, counter: NonFiniteCounter, source: str, checkpoint: Path | None, run_dir: Path
) -> str:
    culprit = f"the reward ({source})" if component == REWARD else f"the estimator ({source})"
    kept = f"The last checkpoint, {checkpoint}, is intact" if checkpoint else "No checkpoint had been written yet"
    return (
        f"step {step}: {culprit} produced {what}; that is {counter.streak} skipped updates in a row "
        f"(steps {counter.first}-{step}, train.max_nonfinite={counter.limit}), so the run stopped. {kept}. "
        + (
            "Check the reward for inputs where it returns NaN or inf"
            if component == REWARD
            else "Lower train.lr, set train.grad_clip, or use a smaller estimator.k"
        )
        + f", then continue with `draft train --resume {run_dir}`."
    )
