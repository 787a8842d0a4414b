"""Digit-classifier reward: ``r = log p(target | image)`` from a small CNN shipped with the project.

Without a target it reads the digit each prompt names ("a handwritten digit three" -> 3), so it
judges the ``digits`` / ``digits-flow`` models on any of their prompts: as a held-out validation
reward (``output: prob``, whose mean is a soft accuracy) it shows a run that stops drawing the
digit asked for while its training reward still rises (docs/monitoring.md: Guards against reward hacking).

The CNN (``draft_core.models.digits.classifier``) was trained by
``python -m draft_core.models.digits.train`` with the ``digits`` model, on the same data. Its
weights (~0.25 MB, shipped with the model) load on the first call, not at import or construction.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from draft_core.models.digits.classifier import DigitCNN, classifier_input, load_classifier
from draft_core.models.digits.data import DIGIT_WORDS
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


_WORD = re.compile(r"\b(" + "|".join(DIGIT_WORDS) + r"|[0-9])\b", re.IGNORECASE)


def prompted_digit(prompt: str) -> int:
    """The digit a prompt names, as a word or a numeral (the last one named): "a handwritten digit three" -> 3."""
    found = _WORD.findall(prompt)
    if not found:
        raise ValueError(
            f"DigitClassifier without a target reads the digit from the prompt, but {prompt!r} names none; use prompts "
            f"that name a digit (zero..nine or 0..9, e.g. the `digits` prompt list) or give target: 0..9."
        )
    last = found[-1].lower()
    return int(last) if last.isdigit() else DIGIT_WORDS.index(last)


class DigitClassifier(nn.Module):
    """Reward ``r = log p(target | image)`` under the shipped digit CNN; at most 0.

    target: the digit (0..9) to reward; None: the digit each prompt names. output: "log-prob"
    (the reward, at most 0) or "prob" (p itself, in [0, 1]; its mean over a batch is a soft
    accuracy, the judge's reading for validation). weights: a classifier file written by the
    training script; None uses the shipped one.
    """

    def __init__(
        self,
        target: int | None = None,
        weights: str | Path | None = None,
        output: Literal["log-prob", "prob"] = "log-prob",
    ) -> None:
        super().__init__()
        if target is not None and (isinstance(target, bool) or not isinstance(target, int) or not 0 <= target <= 9):
            raise ValueError(
                f"DigitClassifier: target must be a digit 0..9 (or null: the digit each prompt names), got {target!r}."
            )
        if output not in ("log-prob", "prob"):
            raise ValueError(f"DigitClassifier: output must be 'log-prob' or 'prob', got {output!r}.")
        self.target = target
        self.uses_prompts = target is None  # without a target it reads the digit each prompt names
        self.weights = weights
        self.output = output
        self.net: DigitCNN | None = None  # loaded on the first call

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1], any size; prompts: B of them when target is None. Returns [B] scores."""
        check_image_batch(images, "DigitClassifier")
        if self.target is None and len(prompts) != len(images):
            raise ValueError(
                f"DigitClassifier without a target reads the digit from each prompt: got {len(prompts)} prompts for {len(images)} images."
            )
        x = images if images.dtype == torch.float64 else images.float()
        if self.net is None:
            # The instance's own copy (0.25 MB) of the cached CNN, so that copying this reward
            # (e.g. for the `dpg` estimator's critic) copies its network too.
            self.net = _copy_to(_CACHE.get(self.weights, torch.device("cpu"), torch.float32), x.device, x.dtype)
        param = next(self.net.parameters())
        if param.device != x.device or param.dtype != x.dtype:
            self.net.to(device=x.device, dtype=x.dtype)
        logp = self.net(classifier_input(x)).log_softmax(dim=-1)
        if self.target is None:
            index = torch.tensor([prompted_digit(p) for p in prompts], device=logp.device)
            chosen = logp.gather(1, index[:, None])[:, 0]
        else:
            chosen = logp[:, self.target]
        return chosen.exp() if self.output == "prob" else chosen

    def extra_repr(self) -> str:
        return (
            f"target={self.target}"
            + (f", output={self.output!r}" if self.output != "log-prob" else "")
            + (f", weights={self.weights!r}" if self.weights is not None else "")
        )
