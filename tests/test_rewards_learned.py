"""The learned rewards (aesthetic, hpsv2, pickscore, clip-score) on tiny random networks saved in the
official file formats and loaded through the real loaders: the conformance checklist, each score
formula against the library's own computation, preprocessing parity with the official processors
on real photographs, and the loading errors."""

from __future__ import annotations

import argparse
import time

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from reward_models import TINY_CLIP_CONFIG, TINY_OPEN_CLIP, aesthetic_state_dict, fake_hub_cache, save_all

from draft_core.errors import ModelLoadError
from draft_core.rewarding.preprocess import CLIP_MEAN, CLIP_STD, OPEN_CLIP_LONGEST_224
from draft_core.testing import RewardConformance
from draft_rewards.aesthetic import HEAD_FILE, HEAD_REPO, Aesthetic
from draft_rewards.clip_score import CLIP_L14, PICKSCORE, ClipScore, PickScore
from draft_rewards.hpsv2 import HPS_FILES, HPS_REPO, HPSv2, check_version

skdata = pytest.importorskip("skimage.data")
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]
PROMPTS = ["a photo of an astronaut", "a cat", "a cup of coffee", "a rocket on the launch pad"]


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return save_all(tmp_path_factory.mktemp("reward_weights"))


def make(name: str, weights, **kw):
    """The reward ``name`` on the tiny checkpoints."""
    if name == "aesthetic":
        return Aesthetic(path=str(weights["aesthetic"]), clip_model=str(weights["clip"]), **kw)
    if name == "hpsv2":
        return HPSv2(path=str(weights["hps"]), arch=TINY_OPEN_CLIP, **kw)
    if name == "pickscore":
        return PickScore(model=str(weights["clip"]), **kw)
    return ClipScore(model=str(weights["clip"]), **kw)


REWARDS = ["aesthetic", "hpsv2", "pickscore", "clip-score"]


# -- the checklist -------------------------------------------------------------------------


class _Tiny(RewardConformance):
    name = ""
    # Kept inside [0.25, 0.75], bicubic upsampling to 224 stays inside [0, 1], so the clamp
    # of the preprocessing (as PIL's uint8 output) never cuts a gradient during gradcheck.
    image_range = (0.25, 0.75)
    # Fast mode: a random projection of the Jacobian against finite differences, two
    # evaluations instead of one per input pixel.
    gradcheck_kwargs = {"fast_mode": True}

    @pytest.fixture(autouse=True)
    def _weights(self, weights):
        self.weights = weights

    def make_reward(self):
        return make(self.name, self.weights)

    def test_output_is_float32(self):
        out = self.make_reward()(self.make_images(2, dtype=torch.bfloat16), self.prompts(2))
        assert out.dtype == torch.float32


class TestAesthetic(_Tiny):
    name = "aesthetic"


class TestHPSv2(_Tiny):
    name = "hpsv2"


class TestPickScore(_Tiny):
    name = "pickscore"


class TestClipScore(_Tiny):
    name = "clip-score"


# -- formulas against the libraries' own computation -----------------------------------------


def _images_224(batch=2, seed=0):
    """Images at the models' input size, so the preprocessing is only the normalisation."""
    g = torch.Generator().manual_seed(seed)
    return 0.25 + 0.5 * torch.rand(batch, 3, 224, 224, generator=g)


def _normalised(images):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    return (images - mean) / std


def _open_clip_ids(prompts):
    import open_clip

    # open_clip's tokenizer (pads with 0): the same BPE ids, independent of the reward's tokenizer.
    ids = open_clip.tokenizer.SimpleTokenizer(context_length=77)(prompts)
    return ids, (ids != 0).long()


@pytest.fixture(scope="session")
def legacy_eos_clip(tmp_path_factory):
    """The tiny CLIP with eos_token_id 2, as older hub configs have (pooling at argmax of the ids)."""
    from transformers import CLIPConfig, CLIPModel

    config = {**TINY_CLIP_CONFIG, "text_config": {**TINY_CLIP_CONFIG["text_config"], "eos_token_id": 2}}
    folder = tmp_path_factory.mktemp("legacy_clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        CLIPModel(CLIPConfig(**config)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", ["pickscore", "clip-score"])
@pytest.mark.parametrize("eos", ["eos-id", "legacy-argmax"])
def test_clip_scores_match_clip_model_logits(weights, legacy_eos_clip, name, eos):
    from transformers import CLIPModel

    if eos == "legacy-argmax":
        weights = {**weights, "clip": legacy_eos_clip}
    model = CLIPModel.from_pretrained(weights["clip"]).eval()
    images, prompts = _images_224(), ["a photo of a cat", "an oil painting of a dog"]
    ids, mask = _open_clip_ids(prompts)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=_normalised(images)).logits_per_image
    expected = logits.diagonal()  # logit_scale.exp() * cosine, PickScore's formula
    if name == "clip-score":
        expected = expected / model.logit_scale.exp()
    torch.testing.assert_close(make(name, weights)(images, prompts), expected, rtol=1e-5, atol=1e-5)


def test_hpsv2_matches_open_clip_forward(weights):
    import open_clip

    model = open_clip.model.CLIP(**TINY_OPEN_CLIP).eval()
    model.load_state_dict(torch.load(weights["hps"], weights_only=True)["state_dict"])
    images, prompts = _images_224(), ["a photo of a cat", "an oil painting of a dog"]
    with torch.no_grad():
        image_features, text_features, _ = model(_normalised(images), _open_clip_ids(prompts)[0])
    # hpsv2.score: diag(image_features @ text_features.T), no logit scale
    expected = (image_features @ text_features.T).diagonal()
    torch.testing.assert_close(make("hpsv2", weights)(images, prompts), expected, rtol=1e-5, atol=1e-5)


def test_aesthetic_is_the_mlp_on_normalised_clip_embeddings(weights):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(weights["clip"]).eval()
    images = _images_224()
    with torch.no_grad():
        embedding = F.normalize(model.get_image_features(pixel_values=_normalised(images)).pooler_output, dim=-1)
    sd, h = aesthetic_state_dict(), embedding
    for i in (0, 2, 4, 6, 7):  # no activations: the improved predictor is affine in eval mode
        h = h @ sd[f"layers.{i}.weight"].T + sd[f"layers.{i}.bias"]
    torch.testing.assert_close(make("aesthetic", weights)(images, []), h.squeeze(1), rtol=1e-5, atol=1e-5)


def test_aesthetic_ignores_prompts(weights):
    reward, images = make("aesthetic", weights), _images_224()
    torch.testing.assert_close(reward(images, ["a", "b"]), reward(images, []))


@pytest.mark.parametrize("name", ["hpsv2", "pickscore", "clip-score"])
def test_prompt_changes_score(weights, name):
    reward, images = make(name, weights), _images_224(1)
    assert (reward(images, ["a photo of a cat"]) - reward(images, ["a red sports car"])).abs() > 1e-4


# -- preprocessing parity with the official processors on real photographs -------------------


def _photo(name):
    img = getattr(skdata, name)()
    return img, torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255


def _official_pixels(name: str, img: np.ndarray) -> torch.Tensor:
    """The model input the official (PIL-based) processor makes."""
    if name == "hpsv2":
        from open_clip.transform import image_transform

        # HPSv2's preprocess_val: longest side to 224 (bicubic), centre-pad with black, CLIP mean/std
        transform = image_transform(
            224,
            is_train=False,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            resize_mode="longest",
            interpolation="bicubic",
            fill_color=0,
        )
        return transform(Image.fromarray(img))[None]
    from transformers import CLIPImageProcessor

    # openai/clip-vit-large-patch14's and PickScore's (laion CLIP-ViT-H-14) processor settings
    proc = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3)
    return proc(images=Image.fromarray(img), return_tensors="pt").pixel_values


@pytest.mark.parametrize("photo", PHOTOS)
def test_hpsv2_preprocessing_matches_open_clip_transform(photo):
    img, x = _photo(photo)
    ref = _official_pixels("hpsv2", img).double()
    diff = ((OPEN_CLIP_LONGEST_224(x) - ref) * torch.tensor(CLIP_STD, dtype=torch.float64).view(1, 3, 1, 1)).abs() * 255
    # PIL rounds the resized image to uint8: a fraction of a grey level on average, a few at edges.
    assert diff.mean() < 0.5, float(diff.mean())
    assert diff.max() < 6, float(diff.max())


@pytest.mark.parametrize("name", REWARDS)
def test_score_parity_with_official_processor(weights, name):
    """The reward on a photo vs the same network on the official processor's pixels."""
    reward = make(name, weights)
    photos = [_photo(p) for p in PHOTOS]
    ours = torch.cat([reward(x.float(), [prompt]) for (_, x), prompt in zip(photos, PROMPTS)])
    net = reward.net
    with torch.no_grad():
        theirs = torch.cat(
            [reward.score_pixels(net, _official_pixels(name, img), [p]) for (img, _), p in zip(photos, PROMPTS)]
        )
    spread = ours.max() - ours.min()
    # measured: about 0.1% of the spread of the four photos' scores
    assert (ours - theirs).abs().max() < 0.01 * spread, (ours, theirs)


# -- loading ---------------------------------------------------------------------------------


def test_construction_loads_nothing():
    # Weights load on the first call: building (e.g. for `draft plugins` or a dry run) is free.
    for reward in (
        Aesthetic(path="/nowhere/head.pth"),
        HPSv2(path="/nowhere/hps.pt"),
        PickScore(model="/nowhere"),
        ClipScore(),
    ):
        assert reward.net is None


@pytest.fixture
def empty_offline_cache(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.mark.parametrize(
    "name, hub_id, file, option",
    [
        ("aesthetic", HEAD_REPO, HEAD_FILE, "path"),
        ("hpsv2", HPS_REPO, HPS_FILES["2.0"], "path"),
        ("pickscore", PICKSCORE, None, "model"),
        ("clip-score", CLIP_L14, None, "model"),
    ],
)
def test_missing_weights_offline_fail_fast_and_say_how(empty_offline_cache, name, hub_id, file, option):
    import open_clip  # noqa: F401  (imports are not what is timed)
    import transformers  # noqa: F401
    from huggingface_hub import hf_hub_download  # noqa: F401

    reward = {"aesthetic": Aesthetic, "hpsv2": HPSv2, "pickscore": PickScore, "clip-score": ClipScore}[name]()
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        reward(torch.rand(1, 3, 8, 8), ["a cat"])
    # no network wait (a hub timeout is 10 s per try); generous for a busy machine
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert message.startswith(f"{name}: ") and "\n" not in message
    assert hub_id in message and (file is None or file in message)
    assert f"--set reward.{option}=" in message and "HF_HUB_OFFLINE=1" in message


@pytest.mark.slow
def test_missing_weights_in_a_fresh_process_with_an_empty_hf_home(tmp_path):
    """The real setting: HF_HUB_OFFLINE=1 and HF_HOME with nothing in it, read at import.

    Slow (a fresh interpreter imports torch, transformers and open_clip: 5-20 s); the
    in-process test above covers the same code with the cache location patched."""
    import os
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from draft_rewards import Aesthetic, ClipScore, HPSv2, PickScore\n"
        "for reward in (Aesthetic(), HPSv2(), PickScore(), ClipScore()):\n"
        "    try:\n"
        "        reward(torch.rand(1, 3, 8, 8), ['a cat'])\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 4, (done.stdout, done.stderr[-2000:])
    for line, hub_id in zip(lines, [HEAD_REPO, HPS_REPO, PICKSCORE, CLIP_L14]):
        assert line.startswith("ModelLoadError") and hub_id in line and "HF_HUB_OFFLINE=1" in line, line
    assert time.perf_counter() - start < 200  # the interpreter's imports, not a network wait


def test_hpsv2_version_picks_the_file(empty_offline_cache):
    with pytest.raises(ModelLoadError, match=r"HPS_v2\.1_compressed\.pt"):
        HPSv2(version=2.1)(torch.rand(1, 3, 8, 8), ["a cat"])


@pytest.mark.parametrize("version, expected", [("2.0", "2.0"), (2, "2.0"), (2.0, "2.0"), ("v2.1", "2.1"), (2.1, "2.1")])
def test_hpsv2_versions(version, expected):
    assert check_version(version) == expected


@pytest.mark.parametrize("version", ["3", 1.0, "2.2", True])
def test_hpsv2_bad_version(version):
    with pytest.raises(ValueError, match="version must be 2.0"):
        HPSv2(version=version)


def test_defaults_load_from_the_hub_cache(empty_offline_cache, weights):
    """With nothing but hub ids, each reward finds its files in the Hugging Face cache."""
    clip_files = {p.name: p for p in weights["clip"].iterdir()}
    fake_hub_cache(empty_offline_cache, PICKSCORE, clip_files)
    fake_hub_cache(empty_offline_cache, CLIP_L14, clip_files)
    fake_hub_cache(empty_offline_cache, HPS_REPO, {HPS_FILES["2.0"]: weights["hps"]})
    fake_hub_cache(empty_offline_cache, HEAD_REPO, {HEAD_FILE: weights["aesthetic"]})
    images, prompts = _images_224(), ["a cat", "a dog"]
    for name, reward in [
        ("aesthetic", Aesthetic()),
        ("hpsv2", HPSv2(arch=TINY_OPEN_CLIP)),
        ("pickscore", PickScore()),
        ("clip-score", ClipScore()),
    ]:
        torch.testing.assert_close(reward(images, prompts), make(name, weights)(images, prompts), msg=name)


def test_missing_local_paths_are_named(weights):
    with pytest.raises(ModelLoadError, match=r"aesthetic: reward\.path '/nowhere/head\.pth' does not exist"):
        Aesthetic(path="/nowhere/head.pth", clip_model=str(weights["clip"]))(_images_224(1), [])
    with pytest.raises(ModelLoadError, match=r"pickscore: reward\.model '\./nowhere' does not exist"):
        PickScore(model="./nowhere")(_images_224(1), ["a"])
    with pytest.raises(ModelLoadError, match=r"is not a file"):
        HPSv2(path=str(weights["clip"]), arch=TINY_OPEN_CLIP)(_images_224(1), ["a"])


def test_a_folder_without_a_clip_model_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ModelLoadError, match=r"clip-score: could not load the local folder .*empty.*CLIPModel\.save_pretrained"
    ):
        ClipScore(model=str(tmp_path / "empty"))(_images_224(1), ["a"])


def test_aesthetic_loads_the_old_linear_predictor(weights, tmp_path):
    # sa_0_4_vit_l_14_linear.pth: a single Linear(768, 1), keys weight and bias
    g = torch.Generator().manual_seed(3)
    sd = {"weight": torch.randn(1, 16, generator=g), "bias": torch.randn(1, generator=g)}
    torch.save(sd, tmp_path / "sa_0_4_vit_l_14_linear.pth")
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(weights["clip"]).eval()
    images = _images_224()
    with torch.no_grad():
        embedding = F.normalize(model.get_image_features(pixel_values=_normalised(images)).pooler_output, dim=-1)
    reward = Aesthetic(path=str(tmp_path / "sa_0_4_vit_l_14_linear.pth"), clip_model=str(weights["clip"]))
    torch.testing.assert_close(reward(images, []), (embedding @ sd["weight"].T + sd["bias"]).squeeze(1))


def test_aesthetic_rejects_other_layouts_and_sizes(weights, tmp_path):
    torch.save({"fc.weight": torch.zeros(1, 16), "fc.bias": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match=r"not an aesthetic predictor head.*layers\.\{0,2,4,6,7\}.*found fc\.bias"):
        Aesthetic(path=str(tmp_path / "other.pth"), clip_model=str(weights["clip"]))(_images_224(1), [])
    wide = {"weight": torch.zeros(1, 768), "bias": torch.zeros(1)}
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(ModelLoadError, match=r"reads 768-d embeddings but .* makes 16-d"):
        Aesthetic(path=str(tmp_path / "wide.pth"), clip_model=str(weights["clip"]))(_images_224(1), [])


def test_hpsv2_checkpoint_variants(weights, tmp_path):
    from safetensors.torch import save_file

    sd = torch.load(weights["hps"], weights_only=True)["state_dict"]
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pt")  # DDP prefix, no wrapper dict
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "hps.safetensors")
    images, prompts = _images_224(1), ["a cat"]
    expected = make("hpsv2", weights)(images, prompts)
    for file in ("ddp.pt", "hps.safetensors"):
        torch.testing.assert_close(HPSv2(path=str(tmp_path / file), arch=TINY_OPEN_CLIP)(images, prompts), expected)


def test_hpsv2_checkpoint_errors(weights, tmp_path):
    sd = torch.load(weights["hps"], weights_only=True)["state_dict"]
    # a pickled object other than tensors: refused by weights_only=True, with a clear message
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pt")
    with pytest.raises(ModelLoadError, match=r"could not read the checkpoint .*weights_only=True"):
        HPSv2(path=str(tmp_path / "pickled.pt"), arch=TINY_OPEN_CLIP)(_images_224(1), ["a"])
    torch.save({"state_dict": {k: v for k, v in sd.items() if k != "logit_scale"}}, tmp_path / "partial.pt")
    with pytest.raises(ModelLoadError, match=r"does not fit open_clip .*1 missing \(e\.g\. logit_scale\)"):
        HPSv2(path=str(tmp_path / "partial.pt"), arch=TINY_OPEN_CLIP)(_images_224(1), ["a"])


# -- behaviour -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REWARDS)
def test_bfloat16_model_follows_the_run(weights, name):
    reward, images, prompts = make(name, weights), _images_224(), ["a cat", "a dog"]
    full = reward(images, prompts)
    half = make(name, weights, dtype="bfloat16")
    out = half(images, prompts)
    assert half.model_dtype() == torch.bfloat16 and out.dtype == torch.float32
    # bfloat16 keeps the embeddings' directions to ~1e-4 (cosine 0.9999 with float32's); the
    # random tiny embeddings are nearly orthogonal, so compare in units of one cosine.
    unit = reward.net.logit_scale.exp().item() if name == "pickscore" else 1.0
    assert (out - full).abs().max() < 0.02 * unit, (out, full)
    assert all(not p.requires_grad for p in half.parameters())


def test_float32_after_bfloat16_reloads_full_precision(weights):
    reward, images, prompts = make("pickscore", weights), _images_224(), ["a cat", "a dog"]
    full = reward(images, prompts)
    reward.net.to(torch.bfloat16)  # as if a caller had cast it
    torch.testing.assert_close(reward(images, prompts), full)
    assert reward.model_dtype() == torch.float32


def test_prompt_cache_follows_a_callers_move(weights):
    # reward.to(...) by a caller (the runner moves rewards to its device) moves the network
    # but not the cached prompt embeddings: they must be recomputed, not reused.
    moved, images, prompts = make("hpsv2", weights), _images_224().double(), ["a cat", "a dog"]
    moved(images.float(), prompts)
    moved.double()
    torch.testing.assert_close(moved(images, prompts), make("hpsv2", weights)(images, prompts), rtol=0, atol=0)


def test_bad_dtype_raises():
    with pytest.raises(ValueError, match=r"dtype must be one of .*'bfloat16'.*got 'half'"):
        PickScore(dtype="half")


@pytest.mark.parametrize("name", ["hpsv2", "pickscore"])
def test_prompts_are_encoded_once(weights, name, monkeypatch):
    reward = make(name, weights)
    calls = []
    original = reward.encode_prompts
    monkeypatch.setattr(
        reward, "encode_prompts", lambda net, prompts: calls.append(list(prompts)) or original(net, prompts)
    )
    images = _images_224(3)
    reward(images, ["a cat", "a dog", "a cat"])
    reward(images, ["a dog", "a cat", "a bird"])
    assert calls == [["a cat", "a dog"], ["a bird"]]


@pytest.mark.parametrize("prompts", [["only one"], "a cat", [1, 2]])
def test_prompt_mismatch_raises(weights, prompts):
    with pytest.raises(ValueError, match="prompts|prompt"):
        make("hpsv2", weights)(_images_224(2), prompts)


def test_train_mode_keeps_dropout_off(weights):
    reward, images = make("aesthetic", weights), _images_224()
    expected = reward(images, [])
    reward.train()
    torch.testing.assert_close(reward(images, []), expected, rtol=0, atol=0)


def test_offline_tokenizer_matches_open_clip_ids():
    from draft_rewards.clip_score import clip_tokenizer

    prompts = ["a photo of an astronaut riding a horse", "Ünïcödé, punctuation!? and numbers 1234"]
    ours = clip_tokenizer(77)(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids, mask = _open_clip_ids(prompts)
    assert torch.equal(ours.input_ids[mask.bool()], ids[mask.bool()])
    assert torch.equal(ours.attention_mask, mask)
