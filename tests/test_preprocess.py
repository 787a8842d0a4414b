"""Differentiable preprocessing against the official PIL-based processors on real photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from draft_core.rewarding.preprocess import (
    CLIP_224,
    CLIP_STD,
    IMAGENET_V2,
    center_crop,
    pad_to,
    resize_longest,
)

skdata = pytest.importorskip("skimage.data")
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def _photo(name: str) -> tuple[np.ndarray, torch.Tensor]:
    img = getattr(skdata, name)()
    return img, torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255


@pytest.mark.parametrize("name", PHOTOS)
def test_clip_224_matches_clip_image_processor(name):
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3)
    img, x = _photo(name)
    ref = proc(images=Image.fromarray(img), return_tensors="pt").pixel_values.double()
    diff = ((CLIP_224(x) - ref) * torch.tensor(CLIP_STD, dtype=torch.float64).view(1, 3, 1, 1)).abs() * 255
    # PIL rounds to uint8 after resizing (and after its first pass): 0.3 grey levels on average.
    assert diff.mean() < 0.5, float(diff.mean())
    assert diff.max() < 1.5, float(diff.max())


@pytest.mark.parametrize("name", PHOTOS)
def test_imagenet_v2_matches_torchvision_weights_transforms(name):
    from torchvision.models import ResNet50_Weights

    img, x = _photo(name)
    ref = ResNet50_Weights.IMAGENET1K_V2.transforms()(Image.fromarray(img))[None].double()
    std = torch.tensor(IMAGENET_V2.std, dtype=torch.float64).view(1, 3, 1, 1)
    diff = ((IMAGENET_V2(x) - ref) * std).abs() * 255
    assert diff.mean() < 0.5, float(diff.mean())
    assert diff.max() < 1.5, float(diff.max())


def test_crop_and_pad_geometry():
    x = torch.arange(5 * 7, dtype=torch.float32).view(1, 1, 5, 7)
    assert center_crop(x, 3, "floor")[0, 0, 0, 0] == x[0, 0, 1, 2]
    assert center_crop(x, 4, "round")[0, 0, 0, 0] == x[0, 0, 0, 2]  # round(0.5)=0, round(1.5)=2
    padded = pad_to(x, 7, 7, center=True)
    assert padded.shape[-2:] == (7, 7) and padded[0, 0, 0].abs().sum() == 0 and padded[0, 0, 1, 0] == 0
    assert resize_longest(torch.rand(1, 3, 40, 80), 20).shape[-2:] == (10, 20)


def test_gradients_reach_pixels():
    x = torch.rand(2, 3, 40, 30, dtype=torch.float64, requires_grad=True)
    CLIP_224.with_size(16)(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
