"""Digit-classifier reward: ``r = log p(target | image)`` from a small CNN shipped with the project.

The CNN (``draft_core.models.digits.classifier``) was trained by
``python -m draft_core.models.digits.train`` with the ``digits`` model, on the same data. Its
weights (~0.25 MB, shipped with the model) load on the first call, not at import or construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from draft_core.models.digits.classifier import DigitCNN, classifier_input, load_classifier
from draft_core.rewarding.checks import check_image_batch

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
