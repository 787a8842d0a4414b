"""Tests of the ``imagereward`` reward on a tiny random twin.

The reference is imscore's port of ImageReward (its module names are the original's, so its state
dict is laid out as ``ImageReward.pt``), assembled from its own classes at a tiny size with a
tiny BERT vocabulary, its ``score`` method unchanged. Its state dict is saved as the checkpoint and
loaded through the reward's loader and converter onto transformers' BLIP classes. Preprocessing is
compared with ImageReward's ``_transform(224)`` (torchvision on PIL) on scikit-image's photos.
"""

from __future__ import annotations

import pytest
import torch
from draft_rewards_imagereward import ImageRewardReward
from draft_rewards_imagereward.model import MEAN, STD
from PIL import Image
from torch import nn

from draft_core.errors import ModelLoadError
from draft_core.rewarding.preprocess import CLIP_MEAN, CLIP_STD, OPEN_CLIP_224
from draft_core.testing import RewardConformance, assert_planned_like_measured, assert_plugin_listed
from draft_core.testing.parity import grey_levels, photos

WORDS = ["a", "photo", "of", "thing", "cat", "dog", "red", "blue", *"0123456789"]
TINY = {
    "vision": dict(
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
    ),
    "text": dict(
        vocab_size=5 + len(WORDS) + 2,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=40,
        encoder_hidden_size=32,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        pad_token_id=0,
    ),
}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert-tiny")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return str(folder)


def _official(tokenizer_dir: str, seed: int = 0):
    """imscore's ImageReward at TINY's sizes, every weight random (its zero-initialised tokens too)."""
    from imscore.imreward.bert import BertModel
    from imscore.imreward.model import MLP, ImageReward
    from imscore.imreward.vit import VisionTransformer
    from transformers import BertConfig, BertTokenizer

    torch.manual_seed(seed)
    model = ImageReward.__new__(ImageReward)  # its __init__ downloads bert-base-uncased
    nn.Module.__init__(model)
    model.blip = nn.Module()
    model.blip.visual_encoder = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2)
    text = TINY["text"]
    config = BertConfig(
        vocab_size=text["vocab_size"],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        encoder_width=32,
        add_cross_attention=True,
    )
    model.blip.text_encoder = BertModel(config)
    tok = BertTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    model.blip.tokenizer = tok
    model.preprocess = nn.Identity()  # compared on the same model input; preprocessing is tested apart
    model.mlp = MLP(32)
    model.mean, model.std = MEAN, STD
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer_dir):
    path = tmp_path_factory.mktemp("imagereward") / "ImageReward.pt"
    torch.save(_official(tokenizer_dir).state_dict(), path)
    return str(path)


class TestImageRewardConformance(RewardConformance):
    gradcheck_kwargs = {"fast_mode": True}

    @pytest.fixture(autouse=True)
    def _model(self, checkpoint, tokenizer_dir):
        self.path, self.tokenizer = checkpoint, tokenizer_dir

    def make_reward(self):
        return ImageRewardReward(path=self.path, tokenizer=self.tokenizer, arch=TINY)


def test_scores_match_imscore(checkpoint, tokenizer_dir):
    reward = ImageRewardReward(path=checkpoint, tokenizer=tokenizer_dir, arch=TINY)
    images = torch.rand(4, 3, 40, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    prompts = ["a red cat", "a photo of a blue dog", "a red cat", "thing 7"]
    ours = reward(images, prompts)
    official = _official(tokenizer_dir).double()
    with torch.no_grad():
        reference = official.score(OPEN_CLIP_224.with_size(32)(images), prompts).squeeze(-1)
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)  # float64 on both sides
    assert ours[0] != ours[1] and ours[0] != ours[2] * 0 + ours[3]  # prompts and images both matter
    torch.testing.assert_close(reward(images[:1], ["a blue dog"]) != ours[:1], torch.tensor([True]))
    # the tokenizer given as its vocab.txt, as the offline error's hint has it, is the same tokenizer
    by_file = ImageRewardReward(path=checkpoint, tokenizer=f"{tokenizer_dir}/vocab.txt", arch=TINY)
    assert torch.equal(by_file(images, prompts), ours)


def test_preprocessing_matches_imagereward_transform():
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    official = Compose(
        [
            Resize(224, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(224),
            ToTensor(),
            Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )  # ImageReward.py's _transform(224)
    for name, array, x in photos():
        worst, mean = grey_levels(OPEN_CLIP_224(x), official(Image.fromarray(array))[None], CLIP_STD)
        assert worst < 1.5 and mean < 0.5, (name, worst, mean)


def test_missing_checkpoint_and_tokenizer(checkpoint, tokenizer_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    images = torch.rand(1, 3, 8, 8)
    with pytest.raises(ModelLoadError, match="does not exist"):
        ImageRewardReward(path=str(tmp_path / "none.pt"), arch=TINY)(images, ["a"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"ImageReward\.pt.*THUDM/ImageReward.*path"):
        ImageRewardReward(arch=TINY).check_available()
    with pytest.raises(ModelLoadError) as info:
        ImageRewardReward(path=checkpoint, tokenizer="draft-tests/no-such-bert", arch=TINY)(images, ["a"])
    for part in (
        "'vocab.txt' of the hub model 'draft-tests/no-such-bert'",
        "reward.tokenizer=",
        "HF_HUB_OFFLINE=1 is set",
    ):
        assert part in str(info.value), str(info.value)
    with pytest.raises(ModelLoadError, match="vocab.txt.*bert-base-uncased"):
        ImageRewardReward(path=checkpoint, tokenizer=str(tmp_path), arch=TINY).check_available()


def test_wrong_checkpoint(tokenizer_dir, tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save({"mlp.layers.0.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ModelLoadError, match="does not fit ImageReward"):
        ImageRewardReward(path=str(wrong), tokenizer=tokenizer_dir, arch=TINY)(torch.rand(1, 3, 8, 8), ["a"])


def test_installed_distribution_registers_imagereward(capsys):
    assert_plugin_listed("reward", "imagereward", "draft-rewards-imagereward", "imagereward", capsys)


def test_draft_plan_needs_no_checkpoint(checkpoint, tokenizer_dir):
    """draft plan builds ImageReward from its architecture on the meta device: what it predicts
    matches the real step with the checkpoint loaded."""
    assert_planned_like_measured({"name": "imagereward", "path": checkpoint, "tokenizer": tokenizer_dir, "arch": TINY})
