"""Tests of the ``mps`` reward on a tiny random twin.

The reference is imscore's port of MPS (its module names are the published checkpoint's), assembled
from its own classes at a tiny size, its ``score`` method unchanged but for two things: its
``.half()`` casts are made no-ops (so it runs in float64 on the CPU) and its tokenizer is open_clip's
(the reward's). MPS normalises the prompt/condition similarity over the whole batch, so the
reference is called with one prompt per batch, where the reward's per-prompt normalisation is MPS's.
"""

from __future__ import annotations

import pytest
import torch
from draft_rewards_mps import MPSReward
from draft_rewards_mps.reward import CONDITION
from PIL import Image
from torch import nn

from draft_core.errors import ModelLoadError
from draft_core.rewarding.preprocess import CLIP_224, CLIP_STD
from draft_core.testing import RewardConformance, assert_planned_like_measured, assert_plugin_listed
from draft_core.testing.parity import grey_levels, photos


def _frozen():
    from draft_core.rewarding.pretrained import _FROZEN

    return _FROZEN


SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, hidden_act="gelu")
TINY = {
    "clip": dict(
        projection_dim=32,
        text_config=dict(SMALL, max_position_embeddings=77),
        vision_config=dict(SMALL, image_size=28, patch_size=14),
    ),
    "cross": dict(dim=32, depth=2, dim_head=8, heads=2),
}


def _official(seed: int = 0):
    import open_clip
    from imscore.mps import model as mps_module
    from imscore.mps.cross import CrossModel
    from transformers import CLIPConfig

    torch.manual_seed(seed)
    wrapper = mps_module.CLIPModel.__new__(mps_module.CLIPModel)  # its __init__ downloads CLIP-H
    nn.Module.__init__(wrapper)
    wrapper.model = mps_module.XCLIPModel(CLIPConfig(**TINY["clip"]))
    wrapper.model.text_model.eos_token_id = 2  # as MPS sets it
    wrapper.cross_model = CrossModel(dim=32, layer_num=2, dim_head=8, heads=2)
    model = mps_module.MPS.__new__(mps_module.MPS)
    nn.Module.__init__(model)
    model.mps = wrapper
    model.condition = CONDITION
    model._process = lambda x: x  # compared on the same model input; preprocessing is tested apart
    model._tokenize = lambda captions: open_clip.tokenize(captions)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
        wrapper.model.logit_scale.fill_(2.0)
        # Random features are all alike, and every prompt token would pass MPS's 0.01 threshold: give
        # the condition's tokens one direction u and "cat"/"dog" the opposite one, with thin encoder
        # layers, so that those two are masked and the mask changes what the image attends to.
        text = wrapper.model.text_model
        for p in text.encoder.parameters():
            p.mul_(0.05)
        text.final_layer_norm.weight.fill_(1.0)
        text.final_layer_norm.bias.zero_()
        embedding, u = text.embeddings.token_embedding.weight, 3 * torch.randn(32)
        embedding[open_clip.tokenize([CONDITION]).unique()] = u + 0.3 * torch.randn(32)
        for word in ("cat", "dog"):
            embedding[open_clip.tokenize([word])[0, 1]] = -u + 0.3 * torch.randn(32)
    return model.eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("mps") / "MPS_overall_checkpoint.pth"
    torch.save(_official().mps.state_dict(), path)  # the published layout: model.*, cross_model.*
    return str(path)


class TestMPSConformance(RewardConformance):
    gradcheck_kwargs = {"fast_mode": True}

    @pytest.fixture(autouse=True)
    def _model(self, checkpoint):
        self.path = checkpoint

    def make_reward(self):
        return MPSReward(path=self.path, arch=TINY)


def test_scores_match_imscore(checkpoint, monkeypatch):
    reward = MPSReward(path=checkpoint, arch=TINY)
    images = torch.rand(4, 3, 40, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    prompts = ["a red cat on a chair", "a red cat on a chair", "a photo of hands and a face", "a blue word"]
    ours = reward(images, prompts)
    official = _official().double()
    monkeypatch.setattr(torch.Tensor, "half", lambda self: self)  # its casts to float16, made no-ops
    pixels = CLIP_224.with_size(28)(images)
    with torch.no_grad():
        reference = torch.cat(
            [
                official.score(pixels[:2], prompts[:2]),
                official.score(pixels[2:3], prompts[2:3]),
                official.score(pixels[3:], prompts[3:]),
            ]
        )
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)  # float64 on both sides
    assert ours.std() > 0
    # the mask is in play: some prompt tokens fall under the threshold, and without it scores change
    net = next(m for k, m in _frozen().items() if k[0][0] == "mps" and k[2] == torch.float64)
    text, eos = net.text_tokens(reward.tokenize(prompts[:1], images.device))
    condition = net.text_tokens(reward.tokenize([CONDITION], images.device))[0][0]
    similarity = (text @ condition.T).amax(-1)
    similarity = similarity / similarity.amax(-1, keepdim=True)
    assert 0 < int((similarity <= 0.01).sum()) < 77
    unmasked = net.cross(
        net.clip.visual_projection(net.clip.vision_model(pixel_values=pixels[:1]).last_hidden_state),
        text,
        torch.zeros(1, 5, 77, dtype=text.dtype),
    )[:, 0]
    plain = net.clip.logit_scale.exp() * torch.cosine_similarity(eos, unmasked, dim=-1)
    assert (plain - ours[:1]).abs().item() > 1e-6


def test_preprocessing_matches_clip_processor():
    from transformers import CLIPImageProcessor

    # laion/CLIP-ViT-H-14-laion2B-s32B-b79K's processor: shortest edge 224 bicubic, crop 224, CLIP mean/std
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3)
    for name, array, x in photos():
        reference = processor(images=Image.fromarray(array), return_tensors="pt").pixel_values
        worst, mean = grey_levels(CLIP_224(x), reference, CLIP_STD)
        assert worst < 1.5 and mean < 0.5, (name, worst, mean)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no checkpoint given.*Kwai-Kolors/MPS.*`path:`"):
        MPSReward(arch=TINY).check_available()
    with pytest.raises(ModelLoadError, match="does not exist"):
        MPSReward(path=str(tmp_path / "none.pth"), arch=TINY)(torch.rand(1, 3, 8, 8), ["a"])
    wrong = tmp_path / "wrong.pth"
    torch.save({"model.logit_scale": torch.zeros(())}, wrong)
    with pytest.raises(ModelLoadError, match="does not fit MPS"):
        MPSReward(path=str(wrong), arch=TINY)(torch.rand(1, 3, 8, 8), ["a"])


def test_installed_distribution_registers_mps(capsys):
    assert_plugin_listed("reward", "mps", "draft-rewards-mps", "mps", capsys)


def test_draft_plan_needs_no_checkpoint(checkpoint):
    """draft plan builds MPS from its architecture on the meta device: what it predicts matches the
    real step with the checkpoint loaded."""
    assert_planned_like_measured({"name": "mps", "path": checkpoint, "arch": TINY})


def test_architecture_is_clip_vit_h_14():
    """Without a checkpoint (draft plan), MPS's CLIP is LAION's ViT-H-14 (986,109,441 parameters, as
    transformers builds laion/CLIP-ViT-H-14-laion2B-s32B-b79K), beside its 4-layer cross tower."""
    with torch.device("meta"):
        net = MPSReward().architecture()
    assert sum(p.numel() for p in net.clip.parameters()) == 986_109_441
    assert len(net.cross.layers) == 4
