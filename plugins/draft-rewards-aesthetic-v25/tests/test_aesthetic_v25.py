"""Tests of the ``aesthetic-v25`` reward on a tiny random twin: the official package's
``AestheticPredictorV2_5Model`` built from a small SiglipVisionConfig, its encoder saved as
``save_pretrained`` writes it and its head as the published ``.pth`` (a torch state dict), loaded
through the reward's loader. Scores are compared with the official model's logits; preprocessing
with SiglipImageProcessor (PIL backend, the processor the predictor was trained with) on photos."""

from __future__ import annotations

import pytest
import torch
from draft_rewards_aesthetic_v25 import AestheticV25Reward
from draft_rewards_aesthetic_v25.reward import SIGLIP_384
from PIL import Image

from draft_core.errors import ModelLoadError
from draft_core.testing import RewardConformance, assert_plugin_listed
from draft_core.testing.parity import grey_levels, photos


def _official(seed: int = 0):
    from aesthetic_predictor_v2_5 import AestheticPredictorV2_5Model
    from transformers import SiglipVisionConfig

    config = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
    )
    torch.manual_seed(seed)
    return AestheticPredictorV2_5Model(config).eval()


@pytest.fixture(scope="session")
def twin(tmp_path_factory):
    """(encoder folder, head file) of the tiny official model."""
    from transformers import SiglipVisionModel

    root = tmp_path_factory.mktemp("aesthetic-v25")
    model = _official()
    encoder = SiglipVisionModel(model.config)
    encoder.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("layers.")})
    encoder.save_pretrained(root / "encoder")
    torch.save(model.layers.state_dict(), root / "aesthetic_predictor_v2_5.pth")  # as published: scoring_head.N.*
    return str(root / "encoder"), str(root / "aesthetic_predictor_v2_5.pth")


class TestAestheticV25Conformance(RewardConformance):
    gradcheck_kwargs = {"fast_mode": True}

    @pytest.fixture(autouse=True)
    def _model(self, twin):
        self.path, self.head = twin

    def make_reward(self):
        return AestheticV25Reward(head=self.head, path=self.path)


def test_scores_match_the_official_model(twin):
    path, head = twin
    images = torch.rand(4, 3, 40, 56, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = AestheticV25Reward(head=head, path=path)(images)
    official = _official().double()
    with torch.no_grad():
        reference = official(pixel_values=SIGLIP_384.with_size(28)(images)).logits.squeeze(-1)
    # float64 on both sides: only summation order differs
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    assert reference.std() > 0  # the images are told apart


def test_preprocessing_matches_siglip_processor():
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    # google/siglip-so400m-patch14-384's preprocessor_config: 384 x 384 bicubic, rescale, mean = std = 0.5
    processor = SiglipImageProcessorPil(
        size={"height": 384, "width": 384}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    for name, array, x in photos():
        reference = processor(images=Image.fromarray(array), return_tensors="pt").pixel_values
        worst, mean = grey_levels(SIGLIP_384(x), reference, (0.5,) * 3)
        assert worst < 1.5 and mean < 0.5, (name, worst, mean)


def test_missing_head_and_encoder(twin, tmp_path, monkeypatch):
    path, head = twin
    with pytest.raises(ModelLoadError, match=r"no `head:` was given.*discus0434/aesthetic-predictor-v2-5"):
        AestheticV25Reward(path=path).check_available()
    with pytest.raises(ModelLoadError, match="is not a file"):
        AestheticV25Reward(head=str(tmp_path / "none.pth"), path=path)(torch.rand(1, 3, 8, 8))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        AestheticV25Reward(head=head, encoder="draft-tests/no-such-siglip")(torch.rand(1, 3, 8, 8))
    for part in ("'draft-tests/no-such-siglip'", "`path:`", "HF_HUB_OFFLINE is set"):
        assert part in str(info.value), str(info.value)
    with pytest.raises(ModelLoadError, match="'draft-tests/no-such-siglip'.*HF_HUB_OFFLINE is set"):
        AestheticV25Reward(head=head, encoder="draft-tests/no-such-siglip").check_available()


def test_wrong_head_file(twin, tmp_path):
    path, _ = twin
    wrong = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(ModelLoadError, match="not the predictor's head"):
        AestheticV25Reward(head=str(wrong), path=path)(torch.rand(1, 3, 8, 8))


def test_installed_distribution_registers_aesthetic_v25(capsys):
    assert_plugin_listed("reward", "aesthetic-v25", "draft-rewards-aesthetic-v25", "aesthetic-v25", capsys)


def test_draft_plan_of_the_default_encoder_reads_no_file(monkeypatch, tmp_path):
    """Offline with an empty Hugging Face cache and no head file, draft plan builds the default
    predictor (SigLIP so400m at 384 px: 428,225,600 parameters; the head 1,321,185) on the meta
    device and counts it."""
    from draft_core.config import load_config
    from draft_core.planning.step import plan_step

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    sets = ["model.name=tiny-random", "sampler.steps=2", "train.batch_size=1", "lora.rank=2"]
    trace = plan_step(load_config(None, [*sets, "reward.name=aesthetic-v25", "prompts.items=[a cat]"]), "cpu")
    # float32 weights on the CPU, and the encoder's int64 position ids (27 x 27 patches)
    assert trace.breakdown["reward weights"] == (428_225_600 + 1_321_185) * 4 + 27 * 27 * 8
