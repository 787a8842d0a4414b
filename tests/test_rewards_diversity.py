"""The in-batch diversity reward (paper B.8): reversed-batch pairs, Euclidean by default, LPIPS optional."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from draft_core.errors import ModelLoadError
from draft_core.testing import RewardConformance
from draft_rewards.diversity import LPIPS_BACKBONES, Diversity


class TestDiversity(RewardConformance):
    def make_reward(self):
        return Diversity()

    def test_batch_independence(self):
        # Batch-dependent by design: image i's reward depends on image i and its partner
        # B-1-i only, and swapping the batch order around the pair leaves it alone.
        reward = Diversity()
        images = self.make_images(4)
        base = reward(images, [])
        changed = images.clone()
        changed[1] = self.make_images(1, seed=9)[0]  # partner of image 2
        out = reward(changed, [])
        torch.testing.assert_close(out[[0, 3]], base[[0, 3]], rtol=0, atol=0)
        assert (out[[1, 2]] - base[[1, 2]]).abs().min() > 1e-3


def test_pairs_reverse_the_batch_and_use_rms_distance():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 5, 6, generator=g, dtype=torch.float64)
    expected = torch.stack([torch.linalg.vector_norm(images[i] - images[3 - i]) / (3 * 5 * 6) ** 0.5 for i in range(4)])
    torch.testing.assert_close(Diversity()(images, []), expected)


def test_identical_images_score_zero_with_zero_gradient():
    # An odd batch's middle image is its own partner: 0, and no NaN from sqrt's slope at 0.
    images = torch.rand(3, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    out = Diversity()(images, [])
    assert out[1] == 0
    out.sum().backward()
    assert torch.isfinite(images.grad).all()
    assert images.grad[1].abs().sum() == 0
    assert (images.grad[[0, 2]].flatten(1).abs().sum(1) > 0).all()


def test_gradient_pushes_partners_apart():
    images = torch.full((2, 3, 4, 4), 0.5, dtype=torch.float64)
    images[0] += 0.1
    images.requires_grad_(True)
    Diversity()(images, []).sum().backward()
    # ascending the reward moves image 0 up and image 1 down: away from each other
    assert (images.grad[0] > 0).all() and (images.grad[1] < 0).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"metric": "cosine"}, "metric must be one of euclidean, lpips"),
        ({"lpips_net": "resnet"}, "lpips_net must be one of alex"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Diversity(**kwargs)


def test_lpips_without_the_package_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError
    with pytest.raises(
        ModelLoadError, match=r"needs the lpips package \(pip install lpips\).*reward\.metric=euclidean"
    ):
        Diversity(metric="lpips")(torch.rand(2, 3, 8, 8), [])


class _FakeLPIPS(torch.nn.Module):
    """Stands in for lpips.LPIPS: mean |a - b| per image, shape [B, 1, 1, 1], records its inputs."""

    seen: list = []

    def __init__(self, net, pretrained, verbose):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.net = net

    def forward(self, a, b):
        _FakeLPIPS.seen.append((a.detach().clone(), b.detach().clone()))
        return (self.scale * (a - b).abs()).mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)


@pytest.fixture
def fake_lpips(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=_FakeLPIPS))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    _FakeLPIPS.seen = []
    return tmp_path


def test_lpips_needs_backbone_weights_in_the_torch_hub_cache(fake_lpips):
    with pytest.raises(
        ModelLoadError, match=r"alexnet-owt-7be5be79\.pth in the torch hub cache.*nothing is downloaded"
    ):
        Diversity(metric="lpips")(torch.rand(2, 3, 8, 8), [])


def test_lpips_gets_pairs_in_minus_one_to_one_and_stays_frozen(fake_lpips):
    (fake_lpips / "checkpoints").mkdir()
    (fake_lpips / "checkpoints" / LPIPS_BACKBONES["vgg"]).write_bytes(b"")
    reward = Diversity(metric="lpips", lpips_net="vgg")
    images = torch.rand(3, 3, 8, 8, requires_grad=True)
    out = reward(images, [])
    out.sum().backward()
    a, b = _FakeLPIPS.seen[0]
    torch.testing.assert_close(a, images.detach() * 2 - 1)
    torch.testing.assert_close(b, images.detach().flip(0) * 2 - 1)
    assert out.shape == (3,) and reward.lpips.net == "vgg"
    assert not reward.lpips.scale.requires_grad and reward.lpips.scale.grad is None
