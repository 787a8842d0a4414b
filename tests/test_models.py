"""Models: the offline tokenizer, tiny-random, load_model, decode and prompt encoding."""

from __future__ import annotations

import socket

import open_clip
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from draft_core.errors import ModelLoadError
from draft_core.models import DiffusionModel, load_model
from draft_core.models.tiny import SD14_SCHEDULER_CONFIG, build_tiny_random, tiny_unet_config
from draft_core.models.tokenizer import offline_clip_tokenizer
from draft_core.samplers.ddim import DDIMSampler

PROMPTS = [
    "a cat",
    "A Photo of an ASTRONAUT riding a horse, 4k!!",
    "  spaces   and\ttabs ",
    "café naïve — emoji 🐱",
    "don't stop: it's 3.14 o'clock",
    "",
    "a very long prompt " * 30,
]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_random()


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    return tiny.save_pretrained(tmp_path_factory.mktemp("tiny-random"))


def components(model: DiffusionModel) -> dict[str, torch.nn.Module]:
    return {"unet": model.unet, "text_encoder": model.text_encoder, "vae": model.vae}


def assert_same_weights(a: DiffusionModel, b: DiffusionModel) -> None:
    for name, module in components(a).items():
        sa, sb = module.state_dict(), components(b)[name].state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key}"


# -- tokenizer --------------------------------------------------------------------------
def test_offline_tokenizer_matches_open_clip():
    ours = offline_clip_tokenizer()
    reference = open_clip.get_tokenizer("ViT-B-32")
    for prompt in PROMPTS:
        ids = ours([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids[0]
        expected = reference([prompt])[0]
        n = int((expected != 0).sum())  # open_clip pads with 0, SD with eos
        assert ids.shape == (77,)
        assert ids[:n].tolist() == expected[:n].tolist(), prompt
        assert (ids[n:] == 49407).all(), prompt
    assert n == 77  # the long prompt was truncated, eos kept last


def test_offline_tokenizer_special_ids():
    tok = offline_clip_tokenizer()
    assert isinstance(tok, CLIPTokenizer)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    assert tok.model_max_length == 77
    assert len(tok) == 49408


# -- tiny-random ------------------------------------------------------------------------
def test_tiny_random_is_deterministic_per_seed(tiny):
    assert_same_weights(tiny, build_tiny_random(seed=0))
    other = build_tiny_random(seed=1)
    for name, module in components(tiny).items():
        a = torch.cat([p.flatten() for p in module.parameters()])
        b = torch.cat([p.flatten() for p in components(other)[name].parameters()])
        assert not torch.equal(a, b), name


def test_tiny_random_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_tiny_random(seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_random_uses_the_stable_diffusion_classes(tiny):
    assert isinstance(tiny.unet, UNet2DConditionModel)
    assert isinstance(tiny.vae, AutoencoderKL)
    assert isinstance(tiny.text_encoder, CLIPTextModel)
    assert isinstance(tiny.tokenizer, CLIPTokenizer)
    assert tiny.scheduler_config == SD14_SCHEDULER_CONFIG
    assert tiny.sample_shape == (4, 8, 8)
    assert tiny.image_size == (64, 64)
    for name, module in components(tiny).items():
        assert not any(p.requires_grad for p in module.parameters()), name
        assert not module.training, name


# -- load_model ---------------------------------------------------------------------------
def test_load_embedded_tiny_random():
    model = load_model("tiny-random", device="cpu")
    assert model.device == torch.device("cpu")
    for name, module in components(model).items():
        assert {p.dtype for p in module.parameters()} == {torch.float32}, name
        assert {p.device.type for p in module.parameters()} == {"cpu"}, name
    assert_same_weights(model, build_tiny_random())


def test_save_and_load_round_trip(tiny, saved):
    assert (saved / "model_index.json").is_file()
    model = load_model(str(saved), device="cpu")
    assert_same_weights(tiny, model)
    cfg = model.scheduler_config
    assert (cfg["steps_offset"], cfg["set_alpha_to_one"], cfg["prediction_type"]) == (1, False, "epsilon")
    for key in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "clip_sample"):
        assert cfg[key] == SD14_SCHEDULER_CONFIG[key], key
    assert model.tokenizer("a cat").input_ids == tiny.tokenizer("a cat").input_ids
    for module in model.modules():
        assert not any(p.requires_grad for p in module.parameters())


def test_load_in_bfloat16(saved):
    model = load_model(str(saved), device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    for name, module in components(model).items():
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}, name


@pytest.mark.parametrize("kind", ["file", "empty folder"])
def test_path_that_is_not_a_diffusers_folder(tmp_path, kind):
    path = tmp_path / "model.ckpt"
    if kind == "file":
        path.write_bytes(b"not a model")
    else:
        path.mkdir()
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path), device="cpu")
    message = str(info.value)
    assert str(path) in message
    for accepted in ("diffusers folder", "hub id", "tiny-random"):
        assert accepted in message


def test_uncached_hub_id_fails_offline_without_network(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("load_model tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    name = "draft-tests/no-such-model-in-any-cache"
    with pytest.raises(ModelLoadError) as info:
        load_model(name, device="cpu")
    message = str(info.value)
    assert name in message
    assert "HF_HUB_OFFLINE" in message


# -- decode ---------------------------------------------------------------------------------
def test_decode_is_a_differentiable_image_in_unit_range(tiny):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    images = tiny.decode(latents)
    assert images.shape == (2, 3, 64, 64)
    assert images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    images.mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def pixel_model(channels: int, text_model: DiffusionModel) -> DiffusionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**{**tiny_unet_config(), "in_channels": channels, "out_channels": channels})
    return DiffusionModel(unet, text_model.text_encoder, text_model.tokenizer, SD14_SCHEDULER_CONFIG, vae=None)


@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_space_model_decodes_to_images(tiny, channels):
    model = pixel_model(channels, tiny)
    assert model.sample_shape == (channels, 8, 8)
    assert model.image_size == (8, 8)
    x = torch.linspace(-1.5, 1.5, 2 * channels * 64).reshape(2, channels, 8, 8)
    images = model.decode(x)
    assert images.shape == (2, 3, 8, 8)
    expected = (x / 2 + 0.5).clamp(0, 1).expand(-1, 3, -1, -1)
    assert torch.equal(images, expected)
    with torch.no_grad():
        sample = DDIMSampler(2, 1.0).sample(
            model, model.encode_prompts(["a"]), model.make_noise(1, torch.Generator().manual_seed(0))
        )
    assert sample.shape == (1, channels, 8, 8)
    assert model.decode(sample).shape == (1, 3, 8, 8)


# -- encode_prompts -----------------------------------------------------------------------
def test_empty_prompt_embedding_is_computed_once():
    model = build_tiny_random()
    batches: list[int] = []
    handle = model.text_encoder.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        first = model.encode_prompts(["a cat", "a dog"])
        assert len(batches) == 2  # the empty prompt, then the prompts
        second = model.encode_prompts(["a bird"])
        third = model.encode_prompts(["a cat", "a dog"])
        assert batches[2:] == [1, 2]
        assert second.uncond is first.uncond
        assert torch.equal(third.cond, first.cond)
        assert first.cond.shape == (2, 77, 32) and first.uncond.shape == (1, 77, 32)
        assert first.prompts == ["a cat", "a dog"]
        assert torch.equal(first.uncond, model.encode_prompts([""]).cond)
        model.to(dtype=torch.float64)
        after = model.encode_prompts(["a cat"])
        assert after.uncond.dtype == after.cond.dtype == torch.float64
    finally:
        handle.remove()
