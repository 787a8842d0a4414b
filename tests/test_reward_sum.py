"""WeightedReward: a weighted sum of rewards is a reward, and logs each term."""

from __future__ import annotations

import pytest
import torch

from draft_core.plugins.protocols import Reward
from draft_core.rewarding.weighted import WeightedReward
from draft_core.testing import RewardConformance
from draft_rewards.jpeg import JpegCompressibility
from draft_rewards.rotation import RotationAnticorrelation


def _terms():
    return {"jpeg": (JpegCompressibility(), 2.0), "rotation": (RotationAnticorrelation(), -0.5)}


class TestWeightedReward(RewardConformance):
    image_size = 8
    # As for JPEG alone (test_rewards_builtin): stay off the codec's soft-clip kink at
    # 0 and 1, and check a random projection of the Jacobian rather than all of it.
    image_range = (0.1, 0.9)
    gradcheck_kwargs = {"fast_mode": True}

    def make_reward(self):
        return WeightedReward(_terms())


def _images():
    return torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_equals_hand_sum_and_logs_terms():
    images = _images()
    total = WeightedReward(_terms())
    out = total(images, ["a"] * 3)
    jpeg, rot = JpegCompressibility()(images, []), RotationAnticorrelation()(images, [])
    torch.testing.assert_close(out, 2.0 * jpeg - 0.5 * rot)
    assert set(total.last_terms) == {"jpeg", "rotation"}
    torch.testing.assert_close(total.last_terms["jpeg"], jpeg)
    torch.testing.assert_close(total.last_terms["rotation"], rot)
    assert not any(v.requires_grad for v in total.last_terms.values())


def test_gradients_combine_linearly():
    def grad(reward):
        images = _images().requires_grad_(True)
        reward(images, []).sum().backward()
        return images.grad

    combined = grad(WeightedReward(_terms()))
    by_hand = 2.0 * grad(JpegCompressibility()) - 0.5 * grad(RotationAnticorrelation())
    torch.testing.assert_close(combined, by_hand)


def test_is_a_reward_and_has_a_readable_repr():
    total = WeightedReward(_terms())
    assert isinstance(total, Reward)
    text = repr(total)
    assert "'jpeg'" in text and "2.0" in text and "RotationAnticorrelation" in text


@pytest.mark.parametrize(
    "terms, match",
    [
        ({}, "at least one"),
        ({"jpeg": JpegCompressibility()}, "'jpeg'.*pair"),
        ({"jpeg": (JpegCompressibility(), "high")}, "'jpeg'.*weight.*'high'"),
        ({"jpeg": (JpegCompressibility(), float("nan"))}, "finite"),
    ],
)
def test_bad_terms_raise(terms, match):
    with pytest.raises(ValueError, match=match):
        WeightedReward(terms)


def test_term_with_wrong_shape_is_named():
    bad = WeightedReward({"broken": (lambda images, prompts: images.mean(), 1.0)})
    with pytest.raises(ValueError, match="'broken'.*\\[B\\]"):
        bad(_images(), [])
