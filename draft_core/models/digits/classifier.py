"""The digit classifier shipped with the ``digits`` model: a small CNN trained on sklearn's
load_digits upsampled to 32x32 (the model's data), with small random shifts and contrast changes so
that it also reads generated digits. The ``digit-classifier`` reward and the quality benchmark use it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from draft_core.models.digits import WEIGHTS_DIR

DEFAULT_WEIGHTS = WEIGHTS_DIR / "digit_classifier.safetensors"
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
            f"digit classifier weights not found at {path}; train them with `python -m draft_core.models.digits.train`."
        )
    config_path = path.with_suffix(".json")
    widths = json.loads(config_path.read_text())["widths"] if config_path.is_file() else DEFAULT_WIDTHS
    net = DigitCNN(widths)
    net.load_state_dict(load_file(str(path)))
    return net.requires_grad_(False).eval()
