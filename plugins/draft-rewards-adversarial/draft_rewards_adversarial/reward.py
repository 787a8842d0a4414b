"""Diffusion adversarial examples: reward = −cross-entropy of an ImageNet ResNet-50 to a target
class (DRaFT paper, Section 5.3 and Appendix B.4).

``r = log softmax(ResNet-50(preprocess(x)))[target] = −CE(logits, target)``, at most 0. The
network is torchvision's ``resnet50`` with its published ImageNet weights
(``IMAGENET1K_V2`` by default, ``IMAGENET1K_V1`` the original), and ``preprocess`` is that
weights' own transform (resize 232 or 256, centre crop 224, ImageNet mean/std) in torch ops.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

from draft_core.errors import ModelLoadError, closest
from draft_core.rewarding.preprocess import IMAGENET_V1, IMAGENET_V2, ImagePreprocess
from draft_core.rewarding.pretrained import check_dtype_option, check_reward_images, compute_dtype, frozen_model

PREPROCESS = {"IMAGENET1K_V1": IMAGENET_V1, "IMAGENET1K_V2": IMAGENET_V2}
DOWNLOAD_TIMEOUT_S = 60


def weights_enum(name: str) -> ResNet50_Weights:
    if name not in PREPROCESS:
        raise ValueError(f"adversarial: weights must be one of {', '.join(PREPROCESS)}, got {name!r}.")
    return ResNet50_Weights[name]


def class_index(target: int | str, categories: Sequence[str]) -> int:
    """``target`` as an index into ``categories``: an int, or a name (case-insensitive)."""
    if isinstance(target, bool):
        raise ValueError(f"adversarial: target_class must be an ImageNet index or name, got {target!r}.")
    if isinstance(target, int):
        if not 0 <= target < len(categories):
            raise ValueError(f"adversarial: target_class {target} is not an ImageNet index (0..{len(categories) - 1}).")
        return target
    if isinstance(target, str):
        lowered = [c.lower() for c in categories]
        if target.strip().lower() in lowered:
            return lowered.index(target.strip().lower())
        match = closest(target.strip().lower(), lowered)
        hint = f" Did you mean '{categories[lowered.index(match)]}' ({lowered.index(match)})?" if match else ""
        raise ValueError(
            f"adversarial: '{target}' is not an ImageNet class name.{hint} Names are torchvision's"
            " weights.meta['categories'] (e.g. 'tabby', 'tiger cat', 'Egyptian cat'); an index 0..999 works too."
        )
    raise ValueError(f"adversarial: target_class must be an ImageNet index or name, got {target!r}.")


def checkpoint_file(weights: ResNet50_Weights) -> Path:
    """Where torchvision keeps the weights: $TORCH_HOME/hub/checkpoints/<file of the URL>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_state_dict(weights: ResNet50_Weights, path: str | None) -> dict[str, torch.Tensor]:
    """The ResNet-50 state dict from ``path`` (a .pth file or a folder holding the official file),
    torchvision's cache, or a download (not with HF_HUB_OFFLINE=1); a clear error otherwise."""
    file, how = weights_file(weights, path, download=True)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise ModelLoadError(f"adversarial: could not read '{file}' as a state dict ({exc}). {how}") from exc


def weights_file(weights: ResNet50_Weights, path: str | None, *, download: bool) -> tuple[Path, str]:
    """(the file to read, how to provide it); ModelLoadError when it is missing and cannot be
    downloaded. Without ``download`` a file that could still be downloaded is not fetched."""
    name = os.path.basename(weights.url)
    how = (
        f"Give `path:` the file {name} (or a folder holding it), or put it at"
        f" {checkpoint_file(weights)} (torchvision's cache, under TORCH_HOME); it is {weights.url}."
    )
    if path is not None:
        file = Path(path).expanduser()
        if file.is_dir():
            file = file / name
        if not file.is_file():
            raise ModelLoadError(f"adversarial: no ResNet-50 weights at '{file}'. {how}")
    else:
        file = checkpoint_file(weights)
        if not file.is_file():
            if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
                raise ModelLoadError(
                    f"adversarial: the ResNet-50 weights {name} are not in torchvision's cache and"
                    f" HF_HUB_OFFLINE is set, so they are not downloaded. {how}"
                )
            if download:
                _download(weights, file, how)
    return file, how


def _download(weights: ResNet50_Weights, file: Path, how: str) -> None:
    # urllib waits forever on a silent network; a socket timeout makes that an error.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(file), progress=False)
    except OSError as exc:
        raise ModelLoadError(f"adversarial: could not download the ResNet-50 weights ({exc}). {how}") from exc
    finally:
        socket.setdefaulttimeout(previous)


class AdversarialReward(nn.Module):
    """Reward [B] = log p(target_class | image) under torchvision's ImageNet ResNet-50.

    target_class: an ImageNet index (0..999) or class name (``"tabby"``, ``"tiger cat"``).
    weights: ``IMAGENET1K_V2`` (default, acc@1 80.9) or ``IMAGENET1K_V1`` (the original,
    76.1). path: a local .pth state dict or a folder holding the official file. image_size:
    the crop side (224 as published; smaller only for tests). dtype: the network's dtype
    (``auto``: bfloat16 on CUDA, float32 on CPU). Prompts are ignored.
    """

    def __init__(
        self,
        target_class: int | str,
        weights: str = "IMAGENET1K_V2",
        path: str | None = None,
        image_size: int = 224,
        dtype: str = "auto",
    ) -> None:
        super().__init__()
        self.weights = weights_enum(weights)
        self.categories: list[str] = list(self.weights.meta["categories"])
        self.target = class_index(target_class, self.categories)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"adversarial: image_size must be an int >= 16, got {image_size!r}.")
        self.preprocess: ImagePreprocess = PREPROCESS[weights].with_size(image_size)
        self.path = path
        self.dtype = check_dtype_option(dtype, "adversarial")

    def check_available(self) -> None:
        """The weights can be found (``path``, or torchvision's cache; online, downloaded later). Loads nothing."""
        weights_file(self.weights, self.path, download=False)

    def load(self) -> nn.Module:
        net = resnet50()
        net.load_state_dict(load_state_dict(self.weights, self.path))
        return net

    def architecture(self) -> nn.Module:
        """ResNet-50 with random weights, reading no file (``draft plan`` builds it on the meta device)."""
        return resnet50()

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1], any size. Returns [B] log-probabilities of the target."""
        check_reward_images(images, "adversarial")
        dtype = compute_dtype(images, self.dtype)
        # keyed by the file it would read, so another TORCH_HOME or path loads again
        where = checkpoint_file(self.weights) if self.path is None else Path(self.path).expanduser().resolve()
        key = ("adversarial", self.weights.name, str(where))
        net = frozen_model(key, self.load, images.device, dtype, owner=self)
        x = self.preprocess(images if images.dtype == torch.float64 else images.float())
        logits = net(x.to(dtype)).to(torch.float64 if dtype == torch.float64 else torch.float32)
        return logits.log_softmax(dim=-1)[:, self.target]

    def extra_repr(self) -> str:
        return (
            f"target_class={self.target} ({self.categories[self.target]!r}),"
            f" weights={self.weights.name}, size={self.preprocess.size}"
        )
