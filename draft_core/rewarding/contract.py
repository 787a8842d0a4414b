"""The reward contract, enforced by the core where it calls a reward: images in, one value per image out.

Every reward the core calls (the estimators' ``inputs.reward`` during training, ``draft eval``,
``draft sample --method``, ``draft score``) is a ``CheckedReward``: before the reward runs, the
images are checked (floating [B, 3, H, W] in [0, 1], B prompts), so a reward need not check them
itself; after it, the result is checked (a floating tensor of shape [B] on the images' device).
A breach stops with one paragraph naming the reward, its plugin and its distribution, before
any optimiser update. Non-finite values are the training loop's business (it skips the update).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from draft_core.errors import DraftError
from draft_core.plugins.bases import RewardBase, as_reward
from draft_core.rewarding.checks import check_image_batch


class RewardContractError(DraftError, ValueError):
    """A reward was given images it cannot score, or returned something other than a floating [B].

    Also a ValueError: callers that treat a reward refusing its input as bad input keep doing so."""


def _returned(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        shape = "a 0-dimensional tensor (a scalar)" if out.ndim == 0 else f"a tensor of shape {list(out.shape)}"
        return f"{shape}, dtype {out.dtype}, on {out.device}"
    return f"{type(out).__name__} {out!r}"[:120]


def check_reward_output(out: Any, images: torch.Tensor, label: str) -> None:
    """Raise RewardContractError unless ``out`` is a floating tensor [B] on the device of ``images``."""
    batch = images.shape[0]
    problem = hint = ""
    if not isinstance(out, torch.Tensor):
        problem = "is not a torch.Tensor"
        hint = " Return a tensor that keeps the graph to the images (not .item(), a list or a numpy array)."
    elif out.shape != (batch,):
        problem = f"has shape {list(out.shape)}"
        if out.ndim == 0:
            hint = " Did it average over the batch? Return one value per image, without the final .mean()."
        elif out.ndim > 1 and out.shape[0] == batch:
            hint = " Reduce the other dimensions (e.g. .mean(dim=1) or .squeeze(1) for [B, 1])."
    elif not out.is_floating_point():
        problem = f"has dtype {out.dtype}"
        hint = " An integer or boolean reward has no gradient; return floating-point values."
    elif out.device != images.device:
        problem = f"is on {out.device}"
        hint = " Compute it on the images' device (move the reward's weights with the images)."
    if problem:
        raise RewardContractError(
            f"{label} returned {_returned(out)}, which {problem}; a reward must return a floating-point "
            f"tensor of shape [B] = [{batch}] (one value per image) on the images' device ({images.device}).{hint}"
        )


def check_reward_inputs(images: Any, prompts: Sequence[str], label: str) -> None:
    """Raise RewardContractError unless ``images`` is floating [B, 3, H, W] in [0, 1] and ``prompts``
    holds B strings (or none, for callers of a reward that ignores prompts)."""
    try:
        check_image_batch(images, label)
    except ValueError as exc:
        raise RewardContractError(
            f"{exc} The reward was not called: a reward is given RGB images [B, 3, H, W] with values in "
            "[0, 1], and whoever calls it (in training, the estimator) must pass them so."
        ) from None
    if isinstance(prompts, str) or len(prompts) not in (0, images.shape[0]):
        got = repr(prompts)[:80] if isinstance(prompts, str) else f"{len(prompts)} prompts"
        raise RewardContractError(
            f"{label}: was given {got} for {images.shape[0]} images; a reward is given one prompt per image "
            "(a list of strings). The reward was not called."
        )


class CheckedReward(RewardBase):
    """``reward(images, prompts)`` behind the core's input and output checks.

    ``label`` names it in messages (e.g. ``reward 'redness' (plugin 'my_reward' from distribution
    my-reward 0.1)``). ``check_images=False`` checks only the output (the terms of a weighted sum,
    whose images the sum has checked). Attributes of the reward (``last_terms``, ``differentiable``,
    ``uses_prompts``, ...) read through; ``inner`` is the reward itself.
    """

    def __init__(self, reward, label: str, *, check_images: bool = True) -> None:
        self.inner = reward
        self.label = label
        self.check_images = check_images

    # The optional members are the reward's own, or the defaults of RewardBase.
    differentiable = property(lambda self: as_reward(self.inner).differentiable)  # type: ignore[assignment]
    uses_prompts = property(lambda self: as_reward(self.inner).uses_prompts)  # type: ignore[assignment]
    last_terms = property(lambda self: as_reward(self.inner).last_terms)  # type: ignore[assignment]

    def check_available(self) -> None:
        as_reward(self.inner).check_available()

    def __call__(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1]; returns [B]."""
        if self.check_images:
            check_reward_inputs(images, prompts, self.label)
        out = self.inner(images, prompts)
        check_reward_output(out, images, self.label)
        return out

    def __getattr__(self, name: str):
        # Only reached for attributes the wrapper lacks: those of the reward itself.
        if name in ("inner", "__setstate__", "__deepcopy__") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def to(self, *args: Any, **kwargs: Any) -> CheckedReward:
        as_reward(self.inner).to(*args, **kwargs)
        return self

    def __repr__(self) -> str:
        return repr(self.inner)


class CheckedModuleReward(CheckedReward, nn.Module):
    """A ``CheckedReward`` around an ``nn.Module`` reward is a module too, holding the reward as its
    submodule ``inner``: ``.parameters()``, ``.eval()``, ``.to()`` and ``isinstance(r, nn.Module)``
    behave as they do on the reward."""

    def __init__(self, reward: nn.Module, label: str, *, check_images: bool = True) -> None:
        nn.Module.__init__(self)
        CheckedReward.__init__(self, reward, label, check_images=check_images)

    def __getattr__(self, name: str):
        try:
            return nn.Module.__getattr__(self, name)  # parameters, buffers, submodules (``inner``)
        except AttributeError:
            if name.startswith("__") or "_modules" not in self.__dict__:
                raise
            return getattr(self._modules["inner"], name)

    __call__ = CheckedReward.__call__  # not nn.Module's hooks: the reward's own call runs its hooks

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        return CheckedReward.__call__(self, images, prompts)

    def to(self, *args, **kwargs):
        self.inner.to(*args, **kwargs)  # the reward's own .to(), should it do more than move tensors
        return self

    __repr__ = CheckedReward.__repr__


def checked_reward(reward, label: str, *, check_images: bool = True) -> CheckedReward:
    """``reward`` behind the core's checks (a module if ``reward`` is one); a checked reward is returned as is."""
    if isinstance(reward, CheckedReward):
        return reward
    cls = CheckedModuleReward if isinstance(reward, nn.Module) else CheckedReward
    return cls(reward, label, check_images=check_images)


def unchecked(reward):
    """The reward behind the core's checks (``reward`` itself when it is not wrapped)."""
    return reward.inner if isinstance(reward, CheckedReward) else reward
