"""Tests of the ``nsfw`` reward on a safety checker built from a small CLIPConfig with random
weights and random concept embeddings, saved as diffusers saves it and loaded through the
reward's loader. The recomputed scores are compared with the checker's own ``no_grad``
forward: its decisions, and its per-concept scores (read from the ``round`` calls it makes).
"""

from __future__ import annotations

import diffusers.pipelines.stable_diffusion.safety_checker as checker_module
import numpy as np
import pytest
import torch
from draft_rewards_nsfw import NSFWReward
from PIL import Image

from draft_core.errors import ModelLoadError
from draft_core.rewarding.preprocess import CLIP_224, CLIP_STD
from draft_core.testing import RewardConformance, assert_plugin_listed
from draft_core.testing.parity import grey_levels, photos


def _small_checker(seed: int = 0):
    from transformers import CLIPConfig

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config=small, vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(seed)
    checker = checker_module.StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds.copy_(torch.randn(17, 16))
        checker.special_care_embeds.copy_(torch.randn(3, 16))
        # thresholds near the cosines of random images, so that decisions go both ways
        checker.concept_embeds_weights.copy_(0.47 + 0.02 * torch.randn(17))
        checker.special_care_embeds_weights.copy_(0.38 + 0.01 * torch.randn(3))
    return checker


@pytest.fixture(scope="session")
def checker_dir(tmp_path_factory):
    """A pipeline-shaped folder: the checker in safety_checker/, as in CompVis/stable-diffusion-v1-4."""
    root = tmp_path_factory.mktemp("sd")
    _small_checker().save_pretrained(root / "safety_checker")
    return str(root)


class TestNSFWConformance(RewardConformance):
    gradcheck_kwargs = {"fast_mode": True}

    @pytest.fixture(autouse=True)
    def _model(self, checker_dir):
        self.path = checker_dir

    def make_reward(self):
        return NSFWReward(path=self.path)


def _official(checker, clip_input: torch.Tensor, monkeypatch) -> tuple[list[bool], torch.Tensor, torch.Tensor]:
    """The checker's forward: (has_nsfw_concepts, special scores [B, 3], concept scores [B, 17]).

    It rounds each score once, 3 special then 17 concept per image; a recording ``round``
    in its module reads them out before rounding, without changing what it returns.
    """
    seen: list[float] = []

    def recording_round(value, digits=None):
        seen.append(float(value))
        return round(value, digits)

    monkeypatch.setattr(checker_module, "round", recording_round, raising=False)
    images = np.zeros((clip_input.shape[0], 8, 8, 3))
    _, has_nsfw = checker(clip_input=clip_input, images=images)
    scores = torch.tensor(seen, dtype=torch.float64).view(clip_input.shape[0], 20)
    return has_nsfw, scores[:, :3], scores[:, 3:]


def test_scores_and_decisions_match_the_checker(checker_dir, monkeypatch):
    reward = NSFWReward(path=checker_dir)
    images = torch.rand(16, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    images[8:] = images[8:] * 0.3  # darker ones land elsewhere in embedding space
    ours = reward.scores(images)
    checker = _small_checker()
    has_nsfw, special, concept = _official(checker, CLIP_224.with_size(32)(images), monkeypatch)
    # Unrounded, the checker's scores are the same float32 cosines minus thresholds as ours, equal
    # up to a few float32 ulps of the scores' scale (its rounding to 3 decimals left 5e-4, nearly
    # all of a fixed 5e-4 + 1e-6); a missing adjustment (0.01) or another concept is off by far more.
    # Its special scores after the first positive one already include the adjustment, so compare
    # those only for images without one.
    scale = concept.abs().max().item()
    torch.testing.assert_close(ours["concept"].double(), concept, rtol=1e-5, atol=1e-5 * scale)
    plain = ~ours["special"].gt(0).any(1)
    torch.testing.assert_close(ours["special"].double()[plain], special[plain], rtol=1e-5, atol=1e-5 * scale)
    clear = ours["margin"].abs() > 1e-3  # away from the rounding boundary
    assert clear.sum() >= 12
    assert ours["nsfw"][clear].tolist() == torch.tensor(has_nsfw)[clear].tolist()
    assert 0 < sum(has_nsfw) < len(has_nsfw), "thresholds should give both decisions"
    assert ours["special"].gt(0).any(1).any(), "some image should take the adjustment path"
    torch.testing.assert_close(reward(images, []), -ours["margin"])


def test_local_checker_folder_and_subfolder(checker_dir):
    images = torch.rand(1, 3, 32, 32)
    direct = NSFWReward(path=checker_dir + "/safety_checker")(images, [])
    torch.testing.assert_close(NSFWReward(path=checker_dir)(images, []), direct)
    torch.testing.assert_close(NSFWReward(path=checker_dir, subfolder="safety_checker")(images, []), direct)


def test_frozen_and_dtype_follows_run(checker_dir):
    from draft_core.rewarding.pretrained import _FROZEN

    out = NSFWReward(path=checker_dir, dtype="bfloat16")(torch.rand(1, 3, 32, 32), [])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    nets = [m for k, m in _FROZEN.items() if k[0][0] == "nsfw" and k[2] == torch.bfloat16]
    assert nets and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in nets[-1].parameters())


def test_missing_weights(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="not a folder.*CompVis/stable-diffusion-safety-checker"):
        NSFWReward(path=str(tmp_path / "missing"))(torch.rand(1, 3, 8, 8), [])
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        NSFWReward(model="draft-tests/no-such-checker")(torch.rand(1, 3, 8, 8), [])
    for part in ("'draft-tests/no-such-checker'", "`path:`", "HF_HUB_OFFLINE is set"):
        assert part in str(info.value), str(info.value)


def test_check_available_finds_the_checker_without_loading(checker_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    NSFWReward(path=str(checker_dir)).check_available()
    with pytest.raises(ModelLoadError, match="not a folder"):
        NSFWReward(path=str(tmp_path / "missing")).check_available()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="'draft-tests/no-such-checker'.*HF_HUB_OFFLINE is set"):
        NSFWReward(model="draft-tests/no-such-checker").check_available()


def test_preprocessing_matches_feature_extractor():
    from transformers import CLIPImageProcessor

    # the checker's feature_extractor in SD 1.x: shortest edge 224 bicubic, crop 224, CLIP mean/std
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3)
    for name, array, x in photos():
        reference = processor(images=Image.fromarray(array), return_tensors="pt").pixel_values
        worst, mean = grey_levels(CLIP_224(x), reference, CLIP_STD)
        # measured: max 1.03, mean 0.3 grey levels (PIL's uint8 rounding)
        assert worst < 1.5 and mean < 0.5, (name, worst, mean)


def test_installed_distribution_registers_nsfw(capsys):
    """Installed (pip install ./plugins/draft-rewards-nsfw), `nsfw` is listed with its distribution."""
    assert_plugin_listed("reward", "nsfw", "draft-rewards-nsfw", "nsfw", capsys)


def test_trains_from_a_config(checker_dir, tmp_path):
    """`reward: {name: nsfw, path: ...}` in a config drives a (tiny) training step end to end."""
    import json

    from draft_core import cli

    out = tmp_path / "run"
    overrides = [
        "model.name=tiny-random",
        "reward.name=nsfw",
        f"reward.path={checker_dir}",
        "prompts.source=animals",
        "sampler.steps=2",
        "estimator.name=draft-k",
        "estimator.k=1",
        "train.batch_size=1",
        "train.steps=1",
        "train.sample_every=0",
        "train.sample_per_prompt=1",
        "train.sample_prompts=[a cat]",
        "lora.rank=2",
    ]
    argv = ["train", "--preset", "quickstart", "--out", str(out), "--no-progress"]
    assert cli.main(argv + sum((["--set", o] for o in overrides), [])) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["grad_norm"] > 0
    assert -1 < rows[0]["reward_mean"] < 1  # −margin: a cosine minus a threshold


def test_draft_plan_of_the_default_checker_reads_no_file(monkeypatch, tmp_path):
    """Offline with an empty Hugging Face cache, draft plan builds the default checker (CLIP ViT-L/14's
    vision tower and projection, 303,981,588 parameters) on the meta device and counts it."""
    from draft_core.config import load_config
    from draft_core.planning.step import plan_step

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    sets = ["model.name=tiny-random", "sampler.steps=2", "train.batch_size=1", "lora.rank=2", "reward.name=nsfw"]
    trace = plan_step(load_config(None, [*sets, "prompts.items=[a cat]"]), "cpu")
    # float32 weights on the CPU, and the vision tower's int64 position ids (16 x 16 patches + the class token)
    assert trace.breakdown["reward weights"] == 303_981_588 * 4 + 257 * 8
