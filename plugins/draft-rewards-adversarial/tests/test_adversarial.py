"""Tests of the ``adversarial`` reward: torchvision's ResNet-50 architecture with random weights,
saved as the official state-dict file in a temporary TORCH_HOME, at a 32 px crop.

The reward is checked against torchvision's own pipeline (the weights' transform on a PIL
image, then the model), its preprocessing against that transform at 224 on scikit-image's
photographs, and the loader against a missing cache.
"""

from __future__ import annotations

import os

import pytest
import torch
import torchvision
from draft_rewards_adversarial import AdversarialReward
from draft_rewards_adversarial.reward import PREPROCESS, checkpoint_file
from PIL import Image
from torchvision.models import ResNet50_Weights
from torchvision.transforms._presets import ImageClassification

from draft_core.errors import ModelLoadError
from draft_core.rewarding.preprocess import IMAGENET_STD
from draft_core.testing import RewardConformance, assert_plugin_listed
from draft_core.testing.parity import grey_levels, photos

SIZE = 32


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a random ResNet-50 under both official file names."""
    home = tmp_path_factory.mktemp("torch_home")
    torch.manual_seed(0)
    state = torchvision.models.resnet50().state_dict()
    for weights in ResNet50_Weights:
        file = home / "hub" / "checkpoints" / os.path.basename(weights.url)
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, file)
    return home


@pytest.fixture
def cached(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home


class TestAdversarialConformance(RewardConformance):
    gradcheck_kwargs = {"fast_mode": True}

    @pytest.fixture(autouse=True)
    def _cache(self, cached):
        pass

    def make_reward(self):
        return AdversarialReward("tabby", image_size=SIZE)


@pytest.mark.parametrize("weights", ["IMAGENET1K_V2", "IMAGENET1K_V1"])
def test_matches_torchvision_pipeline(cached, weights):
    """Same photo through the weights' own transform (PIL) and model: the same log-probability."""
    file = cached / "hub" / "checkpoints" / os.path.basename(ResNet50_Weights[weights].url)
    net = torchvision.models.resnet50()
    net.load_state_dict(torch.load(file, weights_only=True))
    net.eval()
    preset = PREPROCESS[weights].with_size(SIZE)
    official = ImageClassification(crop_size=SIZE, resize_size=preset.resize_to)
    reward = AdversarialReward(281, weights=weights, image_size=SIZE)
    for _, array, x in photos(["chelsea", "coffee"]):
        with torch.no_grad():
            expected = net(official(Image.fromarray(array))[None]).log_softmax(-1)[:, 281]
        # the inputs differ by PIL's uint8 rounding (0.3 grey levels on average): measured 0.2% apart
        torch.testing.assert_close(reward(x.float(), []), expected, atol=0, rtol=5e-3)


def test_reward_is_negative_cross_entropy(cached):
    reward = AdversarialReward(5, image_size=SIZE)
    images = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    net = torchvision.models.resnet50()
    net.load_state_dict(torch.load(checkpoint_file(reward.weights), weights_only=True))
    logits = net.eval()(reward.preprocess(images))
    ce = torch.nn.functional.cross_entropy(logits, torch.full((3,), 5), reduction="none")
    torch.testing.assert_close(reward(images, []), -ce.detach())


def test_class_names_and_indices():
    names = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    assert len(names) == 1000
    assert AdversarialReward("tabby").target == 281 == AdversarialReward(281).target
    assert AdversarialReward("Tiger Cat").target == 282
    assert AdversarialReward("Egyptian cat", weights="IMAGENET1K_V1").target == 285
    with pytest.raises(ValueError, match=r"'tabbby' is not an ImageNet class name. Did you mean 'tabby' \(281\)"):
        AdversarialReward("tabbby")
    with pytest.raises(ValueError, match=r"1000 is not an ImageNet index \(0..999\)"):
        AdversarialReward(1000)
    with pytest.raises(ValueError, match="weights must be one of IMAGENET1K_V1, IMAGENET1K_V2"):
        AdversarialReward(1, weights="DEFAULT")


def test_frozen_and_dtype_follows_run(cached):
    from draft_core.rewarding.pretrained import _FROZEN

    out = AdversarialReward(1, image_size=SIZE, dtype="bfloat16")(torch.rand(1, 3, 32, 32), [])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    nets = [m for k, m in _FROZEN.items() if k[0][0] == "adversarial" and k[2] == torch.bfloat16]
    assert nets and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in nets[-1].parameters())
    assert not nets[-1].training


def test_local_path_file_or_folder(torch_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    folder = torch_home / "hub" / "checkpoints"
    by_folder = AdversarialReward(3, path=str(folder), image_size=SIZE)
    by_file = AdversarialReward(3, path=str(folder / "resnet50-11ad3fa6.pth"), image_size=SIZE)
    images = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(by_folder(images, []), by_file(images, []))


def test_missing_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        AdversarialReward("tabby", image_size=SIZE)(torch.rand(1, 3, 32, 32), [])
    message = str(info.value)
    expected = str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth")
    for part in ("resnet50-11ad3fa6.pth", "HF_HUB_OFFLINE", "`path:`", expected, "TORCH_HOME"):
        assert part in message, message
    with pytest.raises(ModelLoadError, match=r"no ResNet-50 weights at .*nowhere.*resnet50-0676ba61.pth"):
        AdversarialReward(1, weights="IMAGENET1K_V1", path=str(tmp_path / "nowhere.pth"))(torch.rand(1, 3, 32, 32), [])


def test_check_available_finds_the_weights_without_loading(torch_home, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    AdversarialReward(3, path=str(torch_home / "hub" / "checkpoints"), image_size=SIZE).check_available()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="resnet50-11ad3fa6.pth.*HF_HUB_OFFLINE"):
        AdversarialReward("tabby", image_size=SIZE).check_available()
    with pytest.raises(ModelLoadError, match="no ResNet-50 weights at"):
        AdversarialReward(1, path=str(tmp_path / "nowhere.pth")).check_available()


@pytest.mark.parametrize("weights", ["IMAGENET1K_V1", "IMAGENET1K_V2"])
def test_preprocessing_matches_weights_transforms(weights):
    transform = ResNet50_Weights[weights].transforms()
    for name, array, x in photos():
        reference = transform(Image.fromarray(array))[None]
        worst, mean = grey_levels(PREPROCESS[weights](x), reference, IMAGENET_STD)
        # measured: max 1.0, mean 0.29 grey levels (PIL's uint8 rounding)
        assert worst < 1.5 and mean < 0.5, (name, worst, mean)


def test_installed_distribution_registers_adversarial(capsys):
    """Installed (pip install ./plugins/draft-rewards-adversarial), `adversarial` is listed with its distribution."""
    assert_plugin_listed("reward", "adversarial", "draft-rewards-adversarial", "adversarial", capsys)
