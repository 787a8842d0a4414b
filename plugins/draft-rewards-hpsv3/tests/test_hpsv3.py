"""Tests of the ``hpsv3`` reward on a tiny random Qwen2-VL twin, with no hub.

The processor is Qwen2VLProcessor built offline: a tiny byte-level BPE Qwen2 tokenizer (its
merges learnt here from HPSv3's instruction, so a chat is about 750 text tokens, as with Qwen2's
own vocabulary, beside a square image's 256) with Qwen2-VL's
special tokens, Qwen2VLImageProcessor, and Qwen2-VL-7B-Instruct's chat template. The reference
is imscore's port of HPSv3 (``imscore.hpsv3``), assembled at the tiny size without its
``__init__`` (which downloads Qwen2-VL-7B's processor and sizes the head for the 7B). Its state
dict, renamed to the layout of the released HPSv3.safetensors (transformers 4.45's names), is the
checkpoint the reward loads.
"""

from __future__ import annotations

import json

import pytest
import torch
from draft_rewards_hpsv3 import HPSv3Reward
from draft_rewards_hpsv3.model import ARCH, hpsv3_rotary
from draft_rewards_hpsv3.preprocess import VisionInput, target_size
from draft_rewards_hpsv3.reward import INSTRUCTION, REWARD_TOKEN
from torch import nn

from draft_core.errors import ModelLoadError
from draft_core.testing import RewardConformance, assert_planned_like_measured, assert_plugin_listed
from draft_core.testing.parity import photos

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL-7B-Instruct's chat template (its chat_template.json), images and text only.
TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and"
    " message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or"
    " 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture"
    " {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
PROMPTS = ["a red cat", "a photo of the blue dog on a table"]


def _tokenizer():
    """A byte-level BPE Qwen2 tokenizer: 256 byte symbols, merges learnt from the instruction, Qwen2-VL's specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([INSTRUCTION.format(prompt=p) for p in PROMPTS], trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Qwen2TokenizerFast(
        vocab=model["vocab"],
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token=SPECIAL[0],
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    return tok


@pytest.fixture(scope="session")
def processor_dir(tmp_path_factory):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    folder = tmp_path_factory.mktemp("qwen2-vl-tiny")
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=TEMPLATE,
    )
    processor.save_pretrained(folder)
    return str(folder)


def _processor(processor_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(processor_dir, padding_side="right")
    processor.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})  # as HPSv3 does
    return processor


def _arch(processor) -> dict:
    ids = processor.tokenizer.convert_tokens_to_ids
    return {
        "text_config": dict(
            vocab_size=len(processor.tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            hidden_act="silu",
            rms_norm_eps=1e-6,
            # head dim 16: 8 rotary frequencies split over (time, height, width) as 16:24:24 is at 7B
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            pad_token_id=ids(SPECIAL[0]),
            bos_token_id=None,
            eos_token_id=ids("<|im_end|>"),
        ),
        "vision_config": dict(
            depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14, temporal_patch_size=2
        ),
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


@pytest.fixture(scope="session")
def arch(processor_dir):
    return _arch(_processor(processor_dir))


def _official(processor_dir: str, arch: dict, seed: int = 0):
    """imscore's HPSv3 at the tiny size, every weight random; its head sized for the tiny width."""
    from imscore.hpsv3.model import HPSv3
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    model = HPSv3.__new__(HPSv3)  # its __init__ downloads Qwen2-VL-7B's processor
    Qwen2VLForConditionalGeneration.__init__(model, Qwen2VLConfig(**arch))
    width = arch["text_config"]["hidden_size"]
    model.rm_head = nn.Sequential(
        nn.Linear(width, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, 2)
    )
    model.processor = _processor(processor_dir)
    model.special_token_ids = model.processor.tokenizer.convert_tokens_to_ids([REWARD_TOKEN])
    model.reward_token = "special"
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return model.eval()


def _released_layout(state: dict) -> dict:
    """transformers 5's names to those of HPSv3.safetensors (saved by transformers 4.45)."""
    out = {}
    for key, value in state.items():
        key = key.replace("model.language_model.", "model.", 1).replace("model.visual.", "visual.", 1)
        out[key] = value.contiguous()
    return out


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, processor_dir, arch):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("hpsv3") / "HPSv3.safetensors"
    save_file(_released_layout(_official(processor_dir, arch).state_dict()), str(path))
    return str(path)


class TestHPSv3Conformance(RewardConformance):
    # a step and tolerances that fit the float32 rounding inside transformers' Qwen2-VL (see
    # test_gradient_matches_finite_differences): the default step of 1e-6 measures that noise
    gradcheck_kwargs = {"fast_mode": True, "eps": 1e-3, "atol": 2e-3, "rtol": 1e-2}

    @pytest.fixture(autouse=True)
    def _model(self, checkpoint, processor_dir, arch):
        self.path, self.processor, self.arch = checkpoint, processor_dir, arch

    def make_reward(self):
        return HPSv3Reward(path=self.path, processor=self.processor, arch=self.arch)


def test_rotary_is_hpsv3s():
    """The rotary numbers of HPSv3's bfloat16 model on transformers 4.45, at the 7B's sizes: frequencies
    rounded to bfloat16, vision angles a bfloat16 torch.outer of positions and frequencies."""
    from transformers import Qwen2VLConfig

    config = Qwen2VLConfig(**ARCH)
    text, vision = hpsv3_rotary(config)
    exact = 1.0 / (1e6 ** (torch.arange(0, 128, 2, dtype=torch.float) / 128))  # head dim 3584 / 28
    assert torch.equal(text.inv_freq, exact.bfloat16().float()) and not torch.equal(text.inv_freq, exact)
    exact = 1.0 / (1e4 ** (torch.arange(0, 40, 2, dtype=torch.float) / 40))  # half of head dim 1280 / 16
    assert torch.equal(vision.inv_freq, exact.bfloat16().float())
    hw = torch.stack(torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")).flatten(1).T  # (N, 2): h, w
    full = torch.outer(torch.arange(32, dtype=torch.bfloat16), exact.bfloat16())  # transformers 4.45's forward
    angles = full[hw].flatten(1).float()
    cos, sin = vision(torch.zeros(1), hw)
    # against float64 cosines and sines of the same angles: float32's cos/sin are within a few ulps of
    # 1 (torch's vectorised CPU kernels: at most 3.5 ulps), so 8 eps of float32 covers every CPU
    exact_angles = torch.cat([angles, angles], -1).double()
    tol = {"rtol": 0, "atol": 8 * torch.finfo(torch.float32).eps}
    torch.testing.assert_close(cos.double(), exact_angles.cos(), **tol)
    torch.testing.assert_close(sin.double(), exact_angles.sin(), **tol)
    float_angles = (hw[..., None].float() * exact).flatten(1)
    assert (cos - torch.cat([float_angles, float_angles], -1).cos()).abs().max() > 1e-2  # the rounding shows


def test_target_size_is_qwen_vl_utils():
    from imscore.hpsv3.utils import resize

    for h, w in [(8, 8), (512, 512), (300, 451), (1024, 576), (427, 640), (30, 900)]:
        assert target_size(h, w, 28) == resize(h, w, factor=28, minpix=256 * 28 * 28, maxpix=256 * 28 * 28)
    assert target_size(512, 512, 28) == (448, 448)


def test_inputs_match_the_processor(processor_dir, arch):
    """pixel_values, image_grid_thw, input_ids and attention_mask as imscore's prepare makes them
    (qwen-vl-utils' PIL resize, then Qwen2VLProcessor), within PIL's uint8 rounding."""
    official = _official(processor_dir, arch)
    reward = HPSv3Reward(processor=processor_dir, arch=arch)
    std = torch.tensor(official.processor.image_processor.image_std, dtype=torch.float64)
    for name, array, x in photos():
        pair = name == "chelsea"  # two prompts of different lengths: right padding
        prompts = PROMPTS if pair else PROMPTS[:1]
        uint8 = torch.from_numpy(array).permute(2, 0, 1)
        reference = official.prepare([uint8] * len(prompts), prompts)
        ours = reward.inputs(x.expand(len(prompts), -1, -1, -1), prompts)
        for key in ("input_ids", "attention_mask", "image_grid_thw"):
            assert torch.equal(ours[key], reference[key]), (name, key)
        assert ours["pixel_values"].shape == reference["pixel_values"].shape, name
        diff = (ours["pixel_values"] - reference["pixel_values"].double()).abs().unflatten(-1, (3, -1))
        grey = diff * std.view(1, 3, 1) * 255
        assert grey.max() < 1.5 and grey.mean() < 0.5, (name, float(grey.max()), float(grey.mean()))
        assert (ours["input_ids"] == official.special_token_ids[0]).sum(dim=1).tolist() == [1] * len(prompts)


def _imscore_forward(official, batch):
    """imscore's HPSv3.forward, its code unchanged. It was written for transformers 4, whose
    Qwen2VLForConditionalGeneration had ``.language_model`` and ``.visual`` (returning the merged
    image tokens); transformers 5 moved both under ``.model`` and the tower returns an output object
    (``pooler_output`` holds the merged tokens). The two names are lent for the call."""
    tower = official.model.visual
    calls = []

    def visual(pixel_values, grid_thw):
        calls.append(grid_thw)
        return tower(pixel_values, grid_thw=grid_thw).pooler_output

    official.__dict__.update(language_model=official.model.language_model, visual=visual)
    try:
        out = official(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
        )["logits"]
    finally:
        del official.__dict__["language_model"], official.__dict__["visual"]
    assert len(calls) == 1
    return out


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # imscore's autocast("cuda") on CPU
def test_scores_match_imscore(checkpoint, processor_dir, arch):
    reward = HPSv3Reward(path=checkpoint, processor=processor_dir, arch=arch)
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = reward(images, PROMPTS)
    official = _official(processor_dir, arch)
    # HPSv3's bfloat16-rounded rotary numbers (test_rotary_is_hpsv3s) for the reference too
    official.model.language_model.rotary_emb, official.model.visual.rotary_pos_emb = hpsv3_rotary(official.config)
    official = official.double()
    with torch.no_grad():
        logits = _imscore_forward(official, reward.inputs(images, PROMPTS))
    assert logits.shape == (2, 2)
    torch.testing.assert_close(ours, logits[:, 0], rtol=1e-9, atol=1e-9)  # float64 on both sides: mu, not sigma
    # the prompt and the image both change the score
    assert reward(images[:1], PROMPTS[1:]) != ours[0]
    assert reward(images[1:], PROMPTS[:1]) != ours[0]


def test_preprocessing_gradcheck():
    """The torch preprocessing (resize, normalise, patchify) is exact in float64: gradcheck at its defaults."""
    x = torch.rand(1, 3, 10, 14, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    vision = VisionInput()
    assert vision(x)[1].tolist() == [[1, 28, 38]]  # 10 x 14 -> 392 x 532 pixels, 28 x 38 patches
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        assert torch.autograd.gradcheck(lambda im: vision(im)[0], (x.requires_grad_(True),), fast_mode=True)


def test_gradient_matches_finite_differences(checkpoint, processor_dir, arch):
    """d score / d pixels of the whole reward along random directions against central differences.

    transformers' Qwen2-VL rounds through float32 inside (RMSNorm, the vision tower's rotary
    embedding), so float64 input still carries about 2e-7 of noise in a score of about 8 (measured):
    with a step of 1e-4 that is about 2e-3 in the difference quotient, hence the tolerance. Larger
    steps cross the kinks of the reward head's ReLUs (one lies 3e-4 along the first direction here).
    The preprocessing alone is checked exactly (test_preprocessing_gradcheck).
    """
    reward = HPSv3Reward(path=checkpoint, processor=processor_dir, arch=arch)
    gen = torch.Generator().manual_seed(3)
    x = (0.2 + 0.6 * torch.rand(1, 3, 8, 8, generator=gen, dtype=torch.float64)).requires_grad_(True)
    (grad,) = torch.autograd.grad(reward(x, PROMPTS[:1]).sum(), x)
    eps = 1e-4
    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            numeric = float(reward(x + eps * v, PROMPTS[:1]) - reward(x - eps * v, PROMPTS[:1])) / (2 * eps)
        analytic = float((grad * v).sum())
        assert abs(analytic) > 0.1 and abs(analytic - numeric) < 1e-2, (analytic, numeric)


def test_missing_files_name_the_fix(checkpoint, processor_dir, arch, tmp_path, monkeypatch):
    import huggingface_hub.constants

    images = torch.rand(1, 3, 8, 8)
    with pytest.raises(ModelLoadError, match="does not exist"):
        HPSv3Reward(path=str(tmp_path / "none.safetensors"), processor=processor_dir, arch=arch)(images, ["a"])
    pickle = tmp_path / "HPSv3.pt"
    pickle.write_bytes(b"0")
    with pytest.raises(ModelLoadError, match=r"not a \.safetensors file"):
        HPSv3Reward(path=str(pickle), processor=processor_dir, arch=arch).check_available()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        HPSv3Reward(processor=processor_dir, arch=arch).check_available()
    for part in ("'HPSv3.safetensors' of the hub model 'MizzenAI/HPSv3'", "reward.path=", "HF_HUB_OFFLINE=1 is set"):
        assert part in str(info.value), str(info.value)
    with pytest.raises(ModelLoadError) as info:
        HPSv3Reward(path=checkpoint, processor="draft-tests/no-such-qwen", arch=arch)(images, ["a"])
    for part in (
        "hub model 'draft-tests/no-such-qwen'",
        "hf download Qwen/Qwen2-VL-7B-Instruct",
        "reward.processor=DIR",
    ):
        assert part in str(info.value), str(info.value)
    with pytest.raises(ModelLoadError) as info:  # neither file: both named in one error
        HPSv3Reward(processor="draft-tests/no-such-qwen", arch=arch)(images, ["a"])
    assert "MizzenAI/HPSv3" in str(info.value) and "draft-tests/no-such-qwen" in str(info.value), str(info.value)
    with pytest.raises(ModelLoadError, match="tokenizer_config.json.*Qwen/Qwen2-VL-7B-Instruct"):
        HPSv3Reward(path=checkpoint, processor=str(tmp_path), arch=arch)(images, ["a"])


def test_transformers5_layout_loads_the_same(checkpoint, processor_dir, arch, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "HPSv3-t5.safetensors"  # as transformers 5's save_pretrained names the keys
    save_file({k: v.contiguous() for k, v in _official(processor_dir, arch).state_dict().items()}, str(path))
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    old = HPSv3Reward(path=checkpoint, processor=processor_dir, arch=arch)(images, PROMPTS[:1])
    new = HPSv3Reward(path=str(path), processor=processor_dir, arch=arch)(images, PROMPTS[:1])
    torch.testing.assert_close(new, old, rtol=1e-12, atol=0)  # other weights would differ by far more


def test_wrong_checkpoint_and_prompt(checkpoint, processor_dir, arch, tmp_path):
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"rm_head.0.weight": torch.zeros(3)}, str(wrong))
    with pytest.raises(ModelLoadError, match=r"does not fit HPSv3"):
        HPSv3Reward(path=str(wrong), processor=processor_dir, arch=arch)(torch.rand(1, 3, 8, 8), ["a"])
    with pytest.raises(ValueError, match="must not contain <\\|Reward\\|>"):
        HPSv3Reward(path=checkpoint, processor=processor_dir, arch=arch)(torch.rand(1, 3, 8, 8), ["a <|Reward|>"])


def test_installed_distribution_registers_hpsv3(capsys):
    assert_plugin_listed("reward", "hpsv3", "draft-rewards-hpsv3", "hpsv3", capsys)


def test_draft_plan_needs_no_checkpoint(checkpoint, processor_dir, arch):
    """draft plan builds HPSv3 from its architecture on the meta device (the processor's files are
    still read: they decide the sequence's length): what it predicts matches the real step with the
    checkpoint loaded."""
    assert_planned_like_measured({"name": "hpsv3", "path": checkpoint, "processor": processor_dir, "arch": arch})


def test_architecture_is_qwen2_vl_7b():
    """Without a checkpoint (draft plan), the default architecture is Qwen2-VL-7B-Instruct
    (8,291,375,616 parameters as published) without its LM head (152,064 x 3,584), with HPSv3's head."""
    with torch.device("meta"):
        net = HPSv3Reward().architecture()
    head = 3584 * 1024 + 1024 + 1024 * 16 + 16 + 16 * 2 + 2
    assert sum(p.numel() for p in net.parameters()) == 8_291_375_616 - 152_064 * 3_584 + head
