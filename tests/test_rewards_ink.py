"""The ink-coverage reward: the conformance checklist, its formula, and that it rewards bolder strokes."""

from __future__ import annotations

import pytest
import torch

from draft_core.testing import RewardConformance
from draft_rewards.ink import InkCoverage, ink_coverage


class TestInkCoverage(RewardConformance):
    def make_reward(self):
        return InkCoverage()


class TestDarkInkCoverage(RewardConformance):
    def make_reward(self):
        return InkCoverage(threshold=0.3, softness=0.2, ink="dark")


def stroke(width: int, size: int = 16) -> torch.Tensor:
    """[1, 3, size, size] float64: a white vertical bar ``width`` pixels wide on black."""
    x = torch.zeros(1, 3, size, size, dtype=torch.float64)
    x[..., :, size // 2 - width // 2 : size // 2 - width // 2 + width] = 1.0
    return x


def test_formula_in_float64():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grey = x.mean(dim=1)
    expected = (1 / (1 + torch.exp(-(grey - 0.4) / 0.05))).mean(dim=(1, 2))
    assert torch.allclose(ink_coverage(x, 0.4, 0.05), expected, rtol=1e-12, atol=0)
    # Dark ink on light paper is light ink on the negative, with the threshold mirrored.
    assert torch.allclose(ink_coverage(x, 0.4, 0.05, "dark"), ink_coverage(1 - x, 0.6, 0.05), rtol=1e-12, atol=0)


def test_bolder_strokes_score_higher():
    scores = [InkCoverage()(stroke(w)).item() for w in (1, 3, 5)]
    assert scores[0] < scores[1] < scores[2]
    # A pixel fully past the threshold counts (almost) 1, a black one (almost) 0: coverage ≈ share of ink.
    assert scores[1] == pytest.approx(3 / 16, abs=0.01)


def test_gradient_sits_on_pixels_near_the_threshold():
    """d r / d x is σ'((x − t)/s) / (s · N · C): largest at the stroke edges (x ≈ t), tiny on flat ground."""
    x = (
        torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
        .view(1, 1, 1, 3)
        .expand(1, 3, 1, 3)
        .clone()
        .requires_grad_(True)
    )
    ink_coverage(x, 0.5, 0.1).backward()
    g = x.grad[0, 0, 0]
    sig = torch.sigmoid(torch.tensor([-5.0, 0.0, 5.0], dtype=torch.float64))
    assert torch.allclose(g, sig * (1 - sig) / (0.1 * 3 * 3), rtol=1e-12, atol=0)
    assert g[1] > 30 * g[0]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"softness": 0}, "softness"),
        ({"ink": "blue"}, "ink"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, word):
    with pytest.raises(ValueError, match=word):
        InkCoverage(**kwargs)
