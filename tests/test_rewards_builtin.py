"""The built-in rewards: the shared conformance checklist plus what each reward means."""

from __future__ import annotations

import numpy as np
import pluggy
import pytest
import torch

import draft_rewards
from draft_core.plugins import hookspecs
from draft_core.testing import RewardConformance
from draft_rewards.digits import DigitClassifier
from draft_rewards.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_reconstruction_error
from draft_rewards.rotation import RotationAnticorrelation, rotation_anticorrelation

# -- the checklist -------------------------------------------------------------------------


class TestJpegCompressibility(RewardConformance):
    # 8x8 is one JPEG block (the codec pads to 16 by replication): the smallest
    # image that runs every stage, and a full gradcheck Jacobian stays ~400 columns.
    image_size = 8
    # The codec soft-clips decoded pixels to [0, 255], a kink in the gradient; noise
    # that reaches 0 or 1 can decode past it. Its rounding round(y) + (y - round(y))³
    # jumps at half-integers; with these fixed inputs no DCT coefficient lies within
    # gradcheck's eps of a jump, so the default eps and tolerances pass.
    image_range = (0.1, 0.9)
    # Fast mode compares a random projection u·J·v of the Jacobian with finite
    # differences over every input and output: 2 codec calls instead of ~800 for the
    # full Jacobian, which takes minutes on 2 busy cores. The full check is the slow
    # test below.
    gradcheck_kwargs = {"fast_mode": True}

    def make_reward(self):
        return JpegCompressibility(quality=50.0)


class TestJpegIncompressibility(TestJpegCompressibility):
    def make_reward(self):
        return JpegIncompressibility(quality=50.0)


class TestRotationAnticorrelation(RewardConformance):
    def make_reward(self):
        return RotationAnticorrelation()


# -- JPEG ----------------------------------------------------------------------------------


def _noise(size=16, batch=2, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _smooth(size=16):
    """[1, 3, S, S] slow ramps and a low-frequency sinusoid: what JPEG keeps well."""
    t = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([0.2 + 0.6 * xx, 0.2 + 0.6 * yy, 0.5 + 0.2 * torch.sin(3.0 * xx)])[None]


def test_jpeg_constant_image_is_almost_free():
    reward = JpegCompressibility()(torch.full((2, 3, 16, 16), 0.5), ["", ""])
    assert (reward <= 0).all()
    assert reward.abs().max() < 1e-4


def test_jpeg_noise_is_clearly_penalised():
    assert (JpegCompressibility()(_noise(), ["", ""]) < -1e-2).all()


def test_jpeg_incompressibility_is_the_negation():
    images = _noise()
    torch.testing.assert_close(JpegIncompressibility()(images, []), -JpegCompressibility()(images, []))


def test_jpeg_smooth_beats_noise():
    reward = JpegCompressibility()
    assert reward(_smooth(), [""]) > reward(_noise(batch=1), [""])


def test_jpeg_quality_matters():
    images = _noise()
    low, high = JpegCompressibility(quality=10)(images, []), JpegCompressibility(quality=90)(images, [])
    # a higher quality loses less, so it costs less reward
    assert (high > low).all()
    assert (high - low).abs().min() > 1e-3


def test_jpeg_module_matches_function():
    images = _noise()
    torch.testing.assert_close(JpegCompressibility(quality=30)(images, []), -jpeg_reconstruction_error(images, 30))


@pytest.mark.parametrize("quality", [0, -5, 100.5, True, "50", None])
def test_jpeg_bad_quality_raises(quality):
    with pytest.raises(ValueError, match="quality"):
        JpegCompressibility(quality=quality)


def test_jpeg_any_size_and_half_precision():
    # The codec pads to multiples of 16 and crops back, so odd and non-square sizes work.
    images = torch.rand(2, 3, 20, 12, generator=torch.Generator().manual_seed(3))
    full = JpegCompressibility()(images, [])
    half = JpegCompressibility()(images.bfloat16(), [])
    assert half.dtype == torch.float32  # computed in float32, not bf16
    torch.testing.assert_close(half, full, rtol=0.05, atol=1e-4)


def test_jpeg_gradcheck_multiblock_fast():
    # 16x16 spans four luma blocks and one chroma block; fast mode keeps it cheap.
    gen = torch.Generator().manual_seed(2)
    images = (0.1 + 0.8 * torch.rand(1, 3, 16, 16, generator=gen, dtype=torch.float64)).requires_grad_(True)
    with torch.random.fork_rng(devices=[]):  # fast mode's projection vectors: fixed
        torch.manual_seed(0)
        assert torch.autograd.gradcheck(lambda x: JpegCompressibility()(x, []), (images,), fast_mode=True)


@pytest.mark.slow
def test_jpeg_gradcheck_full_jacobian():
    # Every entry of the [2, 2*3*8*8] Jacobian, cross-image zeros included (~4 s on one
    # idle core, minutes on busy ones).
    gen = torch.Generator().manual_seed(1)
    images = (0.1 + 0.8 * torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: JpegCompressibility()(x, []), (images,))


# -- rotation ------------------------------------------------------------------------------


def test_rotation_symmetric_image_scores_zero():
    n = 16
    c = (n - 1) / 2
    i = torch.arange(n, dtype=torch.float32)
    r2 = (i[:, None] - c) ** 2 + (i[None, :] - c) ** 2
    disc = torch.stack([torch.cos(r2 / 20).add(1).div(2), (r2 < 30).float(), torch.full_like(r2, 0.3)])[None]
    assert RotationAnticorrelation()(disc, [""]).abs().max() < 1e-7


def test_rotation_asymmetric_image_scores_positive():
    ramp = torch.linspace(0, 1, 16).expand(1, 3, 16, 16)  # varies along W only
    assert RotationAnticorrelation()(ramp, [""]) > 0.05


def test_rotation_matches_numpy():
    images = _noise(size=8, batch=3, seed=5)
    x = images.double().numpy()
    expected = np.mean([((x - np.rot90(x, k, axes=(-2, -1))) ** 2).mean(axis=(1, 2, 3)) for k in (1, 2, 3)], axis=0)
    got = RotationAnticorrelation()(images, [""] * 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rotation_anticorrelation(images.double()).numpy(), expected, rtol=1e-12)


def test_rotation_non_square_raises():
    with pytest.raises(ValueError, match=r"square.*H=8, W=12"):
        RotationAnticorrelation()(torch.rand(1, 3, 8, 12), [""])


# -- registration --------------------------------------------------------------------------


def test_plugin_registers_the_builtin_rewards():
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(draft_rewards)
    pm.check_pending()
    registered = {}
    pm.hook.register_rewards(register=lambda name, factory: registered.__setitem__(name, factory))
    assert registered == {
        "jpeg-compressibility": JpegCompressibility,
        "jpeg-incompressibility": JpegIncompressibility,
        "rotation-anticorrelation": RotationAnticorrelation,
        "digit-classifier": DigitClassifier,
        "ink-coverage": draft_rewards.InkCoverage,
        "aesthetic": draft_rewards.Aesthetic,
        "hpsv2": draft_rewards.HPSv2,
        "pickscore": draft_rewards.PickScore,
        "clip-score": draft_rewards.ClipScore,
        "diversity": draft_rewards.Diversity,
        "jpeg-size": draft_rewards.JpegSize,
        "jpeg-size-inverse": draft_rewards.JpegSizeInverse,
        "remote": draft_rewards.RemoteReward,
    }
