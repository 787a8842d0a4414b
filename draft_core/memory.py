"""Activation checkpointing of the denoiser, the VAE decode and the reward: what their backward keeps.

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

Where the library has its own block-by-block switch, it is used instead of one region: the
denoiser (``train.checkpoint_denoiser: blocks``, diffusers' ``enable_gradient_checkpointing``
on the UNet's down/mid/up blocks or the transformer's blocks, through
``ModelFamily.set_block_checkpointing``), the VAE decoder (diffusers' ``Decoder`` switch) and
an open_clip reward (``set_grad_checkpointing``). Those keep each block's input and recompute
one block at a time in the backward pass. diffusers checkpoints only when grad mode is on, so
the no-grad steps of a sampling chain are untouched.

``"auto"`` (issue 27): a second forward is paid only where the saving matters. The decode,
the denoiser's blocks and DRaFT-K's differentiable steps are checkpointed when a micro-batch's images hold at least
``MATTERS_PIXELS`` pixels (one 512² image: there SD 1.x's decoder alone keeps 5.7 GiB in
float32, while the digits models at 32 px x 4 images keep a few MiB, which a recomputation
would only slow down); a network reward when it has at least ``MATTERS_REWARD_PARAMS``
parameters (CLIP-class scorers; the digit classifier is tiny).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

#: images per micro-batch from which ``auto`` checkpoints the decode and the denoiser's blocks (pixels).
MATTERS_PIXELS = 512 * 512
#: parameters from which ``auto`` checkpoints a network reward.
MATTERS_REWARD_PARAMS = 50_000_000
DENOISER_MODES = ("auto", "blocks", "step", False)


def wants(mode: bool | str, has_work: bool) -> bool:
    """Whether ``mode`` checkpoints a call that holds activations worth saving (``has_work``)."""
    return mode is True or (mode == "auto" and has_work)


def pixels_matter(image_size: tuple[int, int], batch: int) -> bool:
    """Whether a micro-batch of ``batch`` images of ``image_size`` is large enough for ``auto``."""
    return batch * image_size[0] * image_size[1] >= MATTERS_PIXELS


def block_checkpointing(mode: bool | str, image_size: tuple[int, int], batch: int) -> bool:
    """Whether ``train.checkpoint_denoiser`` = ``mode`` checkpoints the denoiser block by block."""
    if mode not in DENOISER_MODES:
        from draft_core.errors import ConfigError

        raise ConfigError(f"train.checkpoint_denoiser must be one of auto, blocks, step or false, got {mode!r}.")
    return mode == "blocks" or (mode == "auto" and pixels_matter(image_size, batch))


def step_checkpointing(mode: bool | str, estimator: Any, blocks: bool, matters: bool = True) -> None:
    """Set the estimator's whole-step checkpointing (``estimator.checkpoint``) from ``mode``.

    ``step`` turns it on and ``false`` off; ``blocks`` turns its default (on for K > 1) off, since
    the blocks replace it, and keeps an explicit ``true`` (both: the least memory). ``auto`` keeps
    the estimator's own choice where the micro-batch's pixels matter (``matters``; with the blocks
    on as well, a K > 1 step is recomputed with its blocks checkpointed) and turns its default off
    where they do not: at 64 px a recomputed step saves a few MiB and costs a forward per
    differentiable step (random truncation's K up to T: a quarter of the step's time). An explicit
    ``estimator.checkpoint`` is kept."""
    while not hasattr(estimator, "checkpoint") and hasattr(estimator, "inner"):
        estimator = estimator.inner  # a wrapper (kl)
    if not hasattr(estimator, "checkpoint"):
        return
    if mode == "auto":
        if not matters and estimator.checkpoint is None:
            estimator.checkpoint = False
        return
    if mode == "step":
        estimator.checkpoint = True
    elif mode is False or estimator.checkpoint is None:
        estimator.checkpoint = False


def configure_denoiser(model: Any, estimator: Any, mode: bool | str, batch: int) -> bool:
    """Apply ``train.checkpoint_denoiser`` = ``mode`` to ``model`` (a ModelFamily) and the estimator
    for micro-batches of ``batch``; True when the denoiser is checkpointed block by block."""
    from draft_core.errors import ConfigError

    blocks = block_checkpointing(mode, model.image_size, batch)
    if not model.set_block_checkpointing(blocks):
        if mode == "blocks":
            raise ConfigError(
                f"train.checkpoint_denoiser is blocks, but the denoiser of {model!r} "
                f"({type(model.denoiser).__name__}) has no block checkpointing; use step, false or auto."
            )
        blocks = False
    step_checkpointing(mode, estimator, blocks, pixels_matter(model.image_size, batch))
    return blocks


def reward_matters(reward: Any) -> bool:
    """A network reward (or a weighted sum holding one) large enough for ``auto``; an unloaded
    network (loaded on first use) counts by its ``architecture()``-free size estimate: it matters."""
    nets = [r for r in _terms(reward) if isinstance(r, torch.nn.Module)]
    for net in nets:
        inner = getattr(net, "net", net)
        if inner is None:  # a PretrainedReward before its first call: a pretrained scorer is large
            return True
        if sum(p.numel() for p in inner.parameters()) >= MATTERS_REWARD_PARAMS:
            return True
    return False


def _terms(reward: Any) -> list[Any]:
    terms = getattr(reward, "terms", None)
    return [r for r, _ in terms.values()] if isinstance(terms, dict) else [reward]


def internal_switch(reward: Any, on: bool) -> bool:
    """Turn the library's own block checkpointing of each reward network on or off (open_clip's
    ``set_grad_checkpointing``, transformers' ``gradient_checkpointing_enable``); True when every
    network of the reward has such a switch (then no outer region is needed)."""
    found = []
    for r in _terms(reward):
        if not isinstance(r, torch.nn.Module):
            continue
        net = getattr(r, "net", None)
        if net is None:
            found.append(False)
            continue
        found.append(_switch(net, on))
    return bool(found) and all(found)


def _switch(net: torch.nn.Module, on: bool) -> bool:
    state = getattr(net, "_draft_grad_checkpointing", None)  # (on, hits): walk the modules only on a change
    if state is not None and state[0] == on:
        return bool(state[1])
    hits = False
    for module in net.modules():
        if hasattr(module, "set_grad_checkpointing") and module is not net:
            continue  # open_clip: the top-level CLIP's switch covers its towers
        if hasattr(module, "set_grad_checkpointing"):
            module.set_grad_checkpointing(on)
            hits = True
        elif getattr(module, "supports_gradient_checkpointing", False) and hasattr(
            module, "gradient_checkpointing_enable"
        ):
            if on:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                module.gradient_checkpointing_disable()
            hits = True
    object.__setattr__(net, "_draft_grad_checkpointing", (on, hits))
    return hits


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
        self.active = wants(mode, holds_network(reward) and (mode is True or reward_matters(reward)))

    def __repr__(self) -> str:
        return repr(self.reward)

    def __getattr__(self, name: str) -> Any:
        if name == "reward":
            raise AttributeError(name)
        return getattr(self.reward, name)

    def __call__(self, images: torch.Tensor, prompts) -> torch.Tensor:
        """images: [B, 3, H, W] -> [B]."""
        if self.active and grad_flows(images):
            if internal_switch(self.reward, True):  # the library's own, block by block
                return self.reward(images, prompts)
            return run(self.reward, images, prompts)
        if self.active or self.mode is False:
            internal_switch(self.reward, False)
        return self.reward(images, prompts)


def unwrap_reward(reward: Any) -> Any:
    """The reward inside any ``CheckpointedReward`` (an estimator that copies the network needs it)."""
    while isinstance(reward, CheckpointedReward):
        reward = reward.reward
    return reward
