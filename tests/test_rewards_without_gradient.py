"""Rewards without a gradient: jpeg-size (the real encoder, DDPO's reward), the declaration, and
the config-time refusal by estimators that need the reward's gradient."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from draft_core import cli
from draft_core.errors import ConfigError
from draft_core.plugins import load_registry
from draft_core.rewarding.gradient import check_reward_gradient
from draft_core.rewarding.weighted import WeightedReward
from draft_core.testing import RewardConformance
from draft_rewards.jpeg import JpegCompressibility
from draft_rewards.jpeg_size import JpegSize, JpegSizeInverse


class TestJpegSize(RewardConformance):
    image_size = 16

    def make_reward(self):
        return JpegSize()


class TestJpegSizeInverse(TestJpegSize):
    def make_reward(self):
        return JpegSizeInverse(quality=50)


def _pil_kb(image: torch.Tensor, quality: int) -> float:
    """DDPO's computation: round to 8 bits, encode with PIL, bytes / 1000."""
    array = (image.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


def test_jpeg_size_is_minus_the_pil_file_size_in_kb():
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for quality in (95, 30):
        expected = torch.tensor([-_pil_kb(im, quality) for im in images])
        # Equal byte counts; bytes / 1000 in float32 may round an ulp apart (1e-7 relative), while
        # one byte more is 1e-3 kB.
        torch.testing.assert_close(JpegSize(quality)(images, []), expected, rtol=1e-6, atol=0)
        torch.testing.assert_close(JpegSizeInverse(quality)(images, []), -expected, rtol=1e-6, atol=0)
    smooth = torch.linspace(0, 1, 32).expand(1, 3, 32, 32).contiguous()
    assert JpegSize()(smooth, [""]) > JpegSize()(images[:1], [""])  # smooth images compress better
    assert (JpegSize()(images, []) < 0).all()


def test_jpeg_size_rejects_a_bad_quality():
    for bad in (0, 101, 95.5, True):
        with pytest.raises(ValueError, match="quality"):
            JpegSize(bad)


def test_differentiability_is_declared_and_a_sum_inherits_it():
    assert JpegSize.differentiable is False and getattr(JpegCompressibility(), "differentiable", True)
    assert WeightedReward({"a": (JpegCompressibility(), 1.0)}).differentiable
    assert not WeightedReward({"a": (JpegCompressibility(), 1.0), "b": (JpegSize(), 0.1)}).differentiable


def test_estimators_needing_the_gradient_refuse_and_name_the_ones_that_work():
    registry = load_registry()
    needs = {e.name for e in registry.entries("estimator") if getattr(e.factory, "needs_reward_gradient", True)}
    assert {"draft", "draft-k", "draft-lv", "refl", "dpg"} <= needs and not {
        "ddpo",
        "grpo",
        "mix-grpo",
        "diffusion-nft",
    } & needs
    terms = {"jpeg-compressibility": JpegCompressibility(), "jpeg-size": JpegSize()}
    with pytest.raises(
        ConfigError, match=r"'jpeg-size' has no gradient.*estimator 'refl'.*ddpo, diffusion-nft, grpo, mix-grpo"
    ):
        check_reward_gradient(registry.build("estimator", "refl"), "refl", terms, registry)
    check_reward_gradient(registry.build("estimator", "ddpo"), "ddpo", terms, registry)
    check_reward_gradient(registry.build("estimator", "refl"), "refl", {"c": JpegCompressibility()}, registry)


def test_draft_k_with_jpeg_size_exits_2_before_anything_is_created(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--preset",
            "quickstart",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "estimator={name: draft-k, k: 1}",
            "--set",
            "reward={name: jpeg-size}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    message = " ".join(err.split())
    assert "reward 'jpeg-size' has no gradient" in message and "estimator 'draft-k'" in message
    assert (
        "ddpo, diffusion-nft, grpo, mix-grpo" in message
        and "Traceback" not in err
        and len(err.strip().splitlines()) == 1
    )
    assert not out.exists()


def test_doodl_refuses_a_reward_without_gradient_and_best_of_n_takes_it():
    from draft_core.evaluation.baselines import build_method

    with pytest.raises(ConfigError, match="doodl backpropagates the reward"):
        build_method("doodl", JpegSize())
    assert build_method("best-of-n:n=2", JpegSize()).label
