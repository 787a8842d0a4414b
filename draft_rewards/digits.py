"""Digit-classifier reward: ``r = log p(target | image)`` from a small CNN shipped with the project.

The CNN was trained by ``python -m draft_core.models.digits.train`` on sklearn's
load_digits upsampled to 32x32 (the ``digits`` model's data), with small random shifts
and contrast changes so that it also reads generated digits. Its weights
(``assets/digit_classifier.safetensors``, ~0.25 MB) load on the first call, not at
import or construction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from draft_core.images import check_image_batch

ASSETS = Path(__file__).parent / "assets"
DEFAULT_WEIGHTS = ASSETS / "digit_classifier.safetensors"
INPUT_SIZE = 32
DEFAULT_WIDTHS = (16, 32, 64, 64)


class DigitCNN(nn.Module):
    """[B, 1, 32, 32] in [-1, 1] -> [B, 10] logits.

    Strided convolutions, SiLU and a mean pool rather than max pooling and ReLU: the
    reward's gradient is then smooth in the pixels (and passes gradcheck).
    """

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for i, c_out in enumerate(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1), nn.SiLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def classifier_input(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 1] -> [B, 1, 32, 32] grey in [-1, 1], differentiably.

    Grey is the channel mean (the training images have identical channels); other sizes
    are resized bilinearly with antialiasing. The same function prepared the CNN's
    training images.
    """
    grey = images.mean(dim=1, keepdim=True)
    if grey.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        grey = F.interpolate(grey, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return grey * 2 - 1


def load_classifier(weights: str | Path | None = None) -> DigitCNN:
    """The shipped CNN (or one saved by the training script at ``weights``), frozen, in eval mode."""
    from safetensors.torch import load_file

    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"digit classifier weights not found at {path}; "
            f"train them with `python -m draft_core.models.digits.train`."
        )
    config_path = path.with_suffix(".json")
    widths = json.loads(config_path.read_text())["widths"] if config_path.is_file() else DEFAULT_WIDTHS
    net = DigitCNN(widths)
    net.load_state_dict(load_file(str(path)))
    return net.requires_grad_(False).eval()


class _Cached:
    """One loaded CNN per weights file, with a copy per (device, dtype) it has been asked for."""

    def __init__(self) -> None:
        self._nets: dict[tuple, DigitCNN] = {}

    def get(self, weights: str | Path | None, device: torch.device, dtype: torch.dtype) -> DigitCNN:
        key = (str(weights), device, dtype)
        if key not in self._nets:
            base_key = (str(weights), torch.device("cpu"), torch.float32)
            if base_key not in self._nets:
                self._nets[base_key] = load_classifier(weights)
            self._nets[key] = self._nets[base_key] if key == base_key else _copy_to(self._nets[base_key], device, dtype)
        return self._nets[key]


def _copy_to(net: DigitCNN, device: torch.device, dtype: torch.dtype) -> DigitCNN:
    import copy

    return copy.deepcopy(net).to(device=device, dtype=dtype)


_CACHE = _Cached()


def _logits(images: torch.Tensor, weights: str | Path | None, name: str) -> torch.Tensor:
    check_image_batch(images, name)
    # float64 stays float64 (gradcheck); half precision is carried in float32.
    x = images if images.dtype == torch.float64 else images.float()
    net = _CACHE.get(weights, x.device, x.dtype)
    return net(classifier_input(x))


def classify(images: torch.Tensor, weights: str | Path | None = None) -> torch.Tensor:
    """Class probabilities [B, 10] of images [B, 3, H, W] in [0, 1] (no gradient)."""
    with torch.no_grad():
        return _logits(images, weights, "classify").softmax(dim=-1)


class DigitClassifier(nn.Module):
    """Reward ``r = log p(target | image)`` under the shipped digit CNN; at most 0.

    target: the digit (0..9) to reward. weights: a classifier file written by the
    training script; None uses the shipped one. Prompts are ignored: the target is fixed.
    """

    def __init__(self, target: int, weights: str | Path | None = None) -> None:
        super().__init__()
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target <= 9:
            raise ValueError(f"DigitClassifier: target must be a digit 0..9, got {target!r}.")
        self.target = target
        self.weights = weights
        self.net: DigitCNN | None = None  # loaded on the first call

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1], any size. Returns [B] log-probabilities."""
        check_image_batch(images, "DigitClassifier")
        x = images if images.dtype == torch.float64 else images.float()
        if self.net is None:
            # The instance's own copy (0.25 MB) of the cached CNN, so that copying this reward
            # (e.g. for the `dpg` estimator's critic) copies its network too.
            self.net = _copy_to(_CACHE.get(self.weights, torch.device("cpu"), torch.float32), x.device, x.dtype)
        param = next(self.net.parameters())
        if param.device != x.device or param.dtype != x.dtype:
            self.net.to(device=x.device, dtype=x.dtype)
        return self.net(classifier_input(x)).log_softmax(dim=-1)[:, self.target]

    def extra_repr(self) -> str:
        return f"target={self.target}" + (f", weights={self.weights!r}" if self.weights is not None else "")
