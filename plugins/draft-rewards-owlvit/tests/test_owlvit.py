"""Tests of the ``owlvit`` reward on OWL-ViT / OWLv2 architectures built from small configs.

The small random models are saved in the hub format (config.json, model.safetensors,
processor and tokenizer files) and loaded through the reward's real loader; the reward
is checked against transformers' own forward and ``post_process_object_detection``, and
the preprocessing against the official image processors on scikit-image's photographs.
"""

from __future__ import annotations

import pytest
import torch
from draft_rewards_owlvit import OwlViTReward
from draft_rewards_owlvit.preprocess import owlv2_preprocess, preprocess_for
from PIL import Image

from draft_core.errors import ModelLoadError
from draft_core.rewarding.preprocess import CLIP_STD, OWLVIT_768
from draft_core.testing import RewardConformance, assert_plugin_listed
from draft_core.testing.parity import grey_levels, photos

QUERIES = ["a photo of a cat", "a dog"]


def _save_small(kind: str, folder) -> str:
    """A small random OWL-ViT (32 px, patch 8: 16 boxes) or OWLv2 saved like the hub checkpoints."""
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessor,
        OwlViTProcessor,
    )

    from draft_core.models.tokenizer import offline_clip_tokenizer

    text = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    size = {"height": 32, "width": 32}
    torch.manual_seed(0)
    if kind == "owlv2":
        model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
        processor = Owlv2Processor(Owlv2ImageProcessor(size=size), offline_clip_tokenizer(16))
    else:
        model = OwlViTForObjectDetection(OwlViTConfig(text_config=text, vision_config=vision, projection_dim=32))
        processor = OwlViTProcessor(OwlViTImageProcessor(size=size, crop_size=size), offline_clip_tokenizer(16))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def owlvit_dir(tmp_path_factory):
    return _save_small("owlvit", tmp_path_factory.mktemp("owlvit"))


@pytest.fixture(scope="session")
def owlv2_dir(tmp_path_factory):
    return _save_small("owlv2", tmp_path_factory.mktemp("owlv2"))


class TestOwlViTConformance(RewardConformance):
    # every box kept (threshold 0), so finite differences never cross the cut
    gradcheck_kwargs = {"fast_mode": True}

    @pytest.fixture(autouse=True)
    def _model(self, owlvit_dir):
        self.path = owlvit_dir

    def make_reward(self):
        return OwlViTReward(QUERIES, mode="add", path=self.path, threshold=0.0, area_weight=0.5)


def _reference(folder: str, images: torch.Tensor, threshold: float):
    """transformers' forward and post-processing on the same (preprocessed) input."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    text = processor(text=[QUERIES] * images.shape[0], return_tensors="pt")
    with torch.no_grad():
        out = model(**text, pixel_values=preprocess_for(model.config)(images))
    return processor.image_processor.post_process_object_detection(out, threshold=threshold, target_sizes=None)


@pytest.mark.parametrize("kind", ["owlvit", "owlv2"])
@pytest.mark.parametrize("mode", ["add", "remove"])
def test_reward_is_the_sum_over_post_processed_detections(kind, mode, owlvit_dir, owlv2_dir):
    folder = owlvit_dir if kind == "owlvit" else owlv2_dir
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(3))
    scores, _ = OwlViTReward(QUERIES, path=folder).detect(images)
    threshold = float(scores.median())  # some boxes in, some out
    results = _reference(folder, images, threshold)
    assert 0 < sum(len(r["scores"]) for r in results) < scores.numel()
    for area_weight in (0.0, 2.0):
        reward = OwlViTReward(QUERIES, mode=mode, path=folder, threshold=threshold, area_weight=area_weight)
        expected = torch.stack(
            [
                (
                    r["scores"]
                    * (1 + area_weight * (r["boxes"][:, 2] - r["boxes"][:, 0]) * (r["boxes"][:, 3] - r["boxes"][:, 1]))
                ).sum()
                for r in results
            ]
        )
        sign = 1.0 if mode == "add" else -1.0
        torch.testing.assert_close(reward(images, []), sign * expected, rtol=1e-5, atol=1e-6)


def test_default_threshold_drops_weak_boxes(owlvit_dir):
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores, _ = OwlViTReward(QUERIES, path=owlvit_dir).detect(images)
    cut = OwlViTReward(QUERIES, mode="add", path=owlvit_dir, threshold=0.1)(images, [])
    torch.testing.assert_close(cut, scores.where(scores > 0.1, 0).sum(1))


def test_network_follows_the_run_dtype(owlvit_dir):
    reward = OwlViTReward(QUERIES, path=owlvit_dir, dtype="bfloat16")
    out = reward(torch.rand(1, 3, 32, 32), [])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    from draft_core.rewarding.pretrained import _FROZEN

    nets = [m for k, m in _FROZEN.items() if k[0] == ("owlvit", owlvit_dir) and k[2] == torch.bfloat16]
    assert nets and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in nets[0].parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"queries": []}, "non-empty list"),
        ({"queries": ["a cat"], "mode": "erase"}, "'add' or 'remove'"),
        ({"queries": ["a cat"], "threshold": 1.5}, r"threshold .* \[0, 1\)"),
        ({"queries": ["a cat"], "dtype": "half"}, "dtype must be one of"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OwlViTReward(**kwargs)


def test_query_too_long(owlvit_dir):
    reward = OwlViTReward(["a photo of a very small striped cat sitting on a red sofa in the sun"], path=owlvit_dir)
    with pytest.raises(ValueError, match="longer than the model's 16 tokens"):
        reward(torch.rand(1, 3, 32, 32), [])


def test_images_out_of_range(owlvit_dir):
    with pytest.raises(
        ValueError, match=r"must lie in \[0, 1\], got min 0 and max 255 \(images in \[0, 255\]\? divide by 255\)"
    ):
        OwlViTReward(QUERIES, path=owlvit_dir)(torch.full((1, 3, 8, 8), 255.0).index_fill(1, torch.tensor([0]), 0), [])


# -- weights missing -----------------------------------------------------------------------------


def test_path_not_a_folder_or_empty(tmp_path):
    with pytest.raises(ModelLoadError, match="not a folder.*config.json.*hf download google/owlvit-base-patch32"):
        OwlViTReward(QUERIES, path=str(tmp_path / "missing"))(torch.rand(1, 3, 8, 8), [])
    with pytest.raises(ModelLoadError) as info:
        OwlViTReward(QUERIES, path=str(tmp_path))(torch.rand(1, 3, 8, 8), [])
    message = str(info.value)
    assert f"could not load '{tmp_path}'" in message, message
    assert "hf download google/owlvit-base-patch32 --local-dir" in message, message


def test_hub_id_missing_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        OwlViTReward(QUERIES, model="draft-tests/no-such-owlvit")(torch.rand(1, 3, 8, 8), [])
    message = str(info.value)
    for part in ("'draft-tests/no-such-owlvit'", "`path:`", "HF_HUB_OFFLINE is set", "Hugging Face cache"):
        assert part in message, message


def test_check_available_finds_the_model_without_loading(owlvit_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    OwlViTReward(QUERIES, path=str(owlvit_dir)).check_available()
    with pytest.raises(ModelLoadError, match="not a folder"):
        OwlViTReward(QUERIES, path=str(tmp_path / "missing")).check_available()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="'draft-tests/no-such-owlvit'.*HF_HUB_OFFLINE is set"):
        OwlViTReward(QUERIES, model="draft-tests/no-such-owlvit").check_available()


# -- preprocessing parity ------------------------------------------------------------------------


def test_owlvit_preprocessing_matches_processor():
    from transformers import OwlViTImageProcessor

    processor = OwlViTImageProcessor()  # google/owlvit-base-patch32's: 768 x 768 bicubic
    for name, array, x in photos():
        reference = processor(images=Image.fromarray(array), return_tensors="pt").pixel_values
        worst, mean = grey_levels(OWLVIT_768(x), reference, CLIP_STD)
        # measured: max 1.11, mean 0.29 grey levels (PIL's uint8 rounding)
        assert worst < 1.5 and mean < 0.5, (name, worst, mean)


@pytest.mark.parametrize("size", [960, 256])  # enlarging (no blur) and shrinking (Gaussian blur)
def test_owlv2_preprocessing_matches_processor(size):
    from transformers import Owlv2ImageProcessor

    processor = Owlv2ImageProcessor(size={"height": size, "width": size})
    for name, array, x in photos():
        reference = processor(images=Image.fromarray(array), return_tensors="pt").pixel_values
        worst, mean = grey_levels(owlv2_preprocess(x, size), reference, CLIP_STD)
        # measured: max 0.008, mean 0.0001 grey levels (float32 arithmetic)
        assert worst < 0.05 and mean < 0.005, (name, worst, mean)


def test_installed_distribution_registers_owlvit(capsys):
    """Installed (pip install ./plugins/draft-rewards-owlvit), `owlvit` is listed with its distribution."""
    assert_plugin_listed("reward", "owlvit", "draft-rewards-owlvit", "owlvit", capsys)


def test_not_loaded_names_the_distribution(monkeypatch):
    """Without the plugin (here: filtered out by DRAFT_PLUGINS), the error says what provides it."""
    from draft_core.errors import PluginError
    from draft_core.plugins import discovery as plugins

    monkeypatch.setattr(plugins, "_cache", None)  # put back afterwards
    monkeypatch.setenv("DRAFT_PLUGINS", "")
    with pytest.raises(PluginError) as info:
        plugins.load_registry(refresh=True).get("reward", "owlvit")
    assert "'owlvit' is provided by the distribution draft-rewards-owlvit" in str(info.value)


@pytest.mark.parametrize("size", [5, 16])  # shrinking (blur, then bilinear) and enlarging
def test_owlv2_preprocessing_gradients(size):
    x = torch.rand(1, 3, 12, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: owlv2_preprocess(z, size), (x,))
