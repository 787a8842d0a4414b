"""Activation checkpointing of the VAE decode and of the reward: their backward keeps only the input.

Without it, a differentiated decode keeps every activation of the VAE decoder until the
backward pass (about 5.7 GiB of float32 per 512² image for SD 1.x's decoder), and a
network reward keeps its own; with it, only the input is kept and the call is run a
second time during the backward pass (one more forward of the decoder or reward). The
decode is checkpointed one image at a time (``DiffusionModel.decode``), so the backward
pass holds one image's decoder activations at a time, not the batch's; the reward is one
region (a reward may compare the images of a batch).

Modes (``train.checkpoint_decode``, ``train.checkpoint_reward``): ``True``, ``False`` or
``"auto"``. Checkpointing applies only where gradients flow through the call (grad mode
on and the input requiring grad); otherwise the call runs as written. ``"auto"`` turns it
on where there is something to save: for the decode, when the model has a VAE (a
pixel-space model's decode is an affine map and a clamp); for the reward, when it is a
``torch.nn.Module`` (a network) or a weighted sum holding one. Plain-function rewards
(JPEG, ...) are left alone under ``"auto"``: their activations are small, and a plugin
may count its calls. The recomputation runs with the RNG state of the first call
(``torch.utils.checkpoint`` restores it), so the gradients are those of the unchecked call.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

MODES = (True, False, "auto")


def wants(mode: bool | str, has_work: bool) -> bool:
    """Whether ``mode`` checkpoints a call that holds activations worth saving (``has_work``)."""
    return mode is True or (mode == "auto" and has_work)


def grad_flows(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def run(fn: Callable, *args: Any) -> Any:
    """``fn(*args)``, keeping only the inputs for the backward pass."""
    return torch_checkpoint(fn, *args, use_reentrant=False)


def holds_network(reward: Any) -> bool:
    """A torch.nn.Module, or a weighted sum (``terms``) with one among its terms."""
    if isinstance(reward, torch.nn.Module):
        return True
    terms = getattr(reward, "terms", None)
    return isinstance(terms, dict) and any(isinstance(r, torch.nn.Module) for r, _ in terms.values())


class CheckpointedReward:
    """A reward whose differentiated calls are checkpointed according to ``mode``.

    Everything else (attributes, ``to``, ``last_terms``) is the wrapped reward's.
    """

    def __init__(self, reward: Any, mode: bool | str = "auto") -> None:
        self.reward = reward
        self.mode = mode
        self.active = wants(mode, holds_network(reward))

    def __repr__(self) -> str:
        return repr(self.reward)

    def __getattr__(self, name: str) -> Any:
        if name == "reward":
            raise AttributeError(name)
        return getattr(self.reward, name)

    def __call__(self, images: torch.Tensor, prompts) -> torch.Tensor:
        """images: [B, 3, H, W] -> [B]."""
        if self.active and grad_flows(images):
            return run(self.reward, images, prompts)
        return self.reward(images, prompts)


def unwrap_reward(reward: Any) -> Any:
    """The reward inside any ``CheckpointedReward`` (an estimator that copies the network needs it)."""
    while isinstance(reward, CheckpointedReward):
        reward = reward.reward
    return reward
