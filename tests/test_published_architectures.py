"""The published architectures draft plans with (draft_core/planning/published.py), counted on the meta device.

Each count is checked within 1% of a published figure. Where the publisher gives a rounded
figure ("12B"), the figure here is the one its released files imply: the bf16/fp16 safetensors
size in the hub repository's file listing divided by 2 bytes per value. A wrong layer count,
width or block type moves a count by far more than 1% (one SDXL transformer block is ~0.5%,
one FLUX single block ~2.4%), so these catch a mistyped config.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

from draft_core.planning import published

M, B = 1e6, 1e9


def _count(module: torch.nn.Module, buffers: bool = False) -> int:
    n = sum(p.numel() for p in module.parameters())
    return n + (sum(b.numel() for b in module.buffers()) if buffers else 0)


CASES = {
    # stabilityai/stable-diffusion-xl-base-1.0: SDXL report (Podell et al. 2023, Table 1) "2.6B";
    # unet/diffusion_pytorch_model.fp16.safetensors 5.14 GB = 2.567B values.
    "SDXL UNet": (lambda: UNet2DConditionModel(**published.sdxl_unet_config()), 2.567 * B, False),
    # stabilityai/stable-diffusion-3.5-medium: transformer/diffusion_pytorch_model.safetensors 4.94 GB in
    # bf16 = 2.47B values, of which the 384x384x1536 position table (a saved buffer, 226M) is not
    # trained: 2.243B parameters. Stability's announcement rounds this to "2.5 billion".
    "SD3.5-medium transformer (weights + position table)": (
        lambda: SD3Transformer2DModel(**published.sd35_medium_transformer_config()),
        2.47 * B,
        True,
    ),
    # black-forest-labs/FLUX.1-dev: "a 12 billion parameter rectified flow transformer" (model card);
    # transformer/ safetensors shards total 23.8 GB in bf16 = 11.9B.
    "FLUX.1-dev transformer": (
        lambda: FluxTransformer2DModel(**published.flux_dev_transformer_config()),
        11.9 * B,
        False,
    ),
    # openai/clip-vit-large-patch14's text tower: CLIP (Radford et al. 2021) text transformer 123M;
    # SD 1.4's text_encoder/model.safetensors 492 MB in fp32 = 123M.
    "CLIP-L text": (lambda: CLIPTextModel(published.clip_l_config()), 123 * M, False),
    # SDXL's text_encoder_2 (OpenCLIP ViT-bigG/14 text tower with projection):
    # text_encoder_2/model.fp16.safetensors 1.39 GB = 695M.
    "OpenCLIP bigG text": (lambda: CLIPTextModelWithProjection(published.clip_bigg_config()), 695 * M, False),
    # google/t5-v1_1-xxl's encoder: FLUX.1-dev's text_encoder_2/ shards total 9.52 GB in bf16 = 4.76B.
    "T5-XXL encoder": (lambda: T5EncoderModel(published.t5_xxl_config()), 4.76 * B, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_parameter_count_matches_the_published_figure(name):
    build, figure, with_buffers = CASES[name]
    with torch.device("meta"):
        count = _count(build(), with_buffers)
    assert abs(count - figure) / figure < 0.01, f"{name}: {count / B:.4f}B against the published {figure / B:.4f}B"


def test_sd35_medium_trained_parameters():
    """Without the position table: 2.243B, the 2.24B the brief gives for SD3.5-medium's transformer."""
    with torch.device("meta"):
        model = SD3Transformer2DModel(**published.sd35_medium_transformer_config())
    assert abs(_count(model) - 2.243 * B) / (2.243 * B) < 0.01
    assert sum(b.numel() for b in model.buffers()) == 384 * 384 * 1536


@pytest.mark.parametrize("family, denoiser", [("sdxl", "unet"), ("sd3", "transformer"), ("flux", "transformer")])
def test_components_are_the_published_ones(family, denoiser):
    """Every component of a family's published model builds on the meta device; the VAEs' factors
    are the published ones (they set decode's scaling)."""
    with torch.device("meta"):
        parts = published.components(family)
    assert isinstance(parts.pop("scheduler_config"), dict)
    assert denoiser in parts and all(p.device.type == "meta" for m in parts.values() for p in m.parameters())
    factors = {"sdxl": (0.13025, None), "sd3": (1.5305, 0.0609), "flux": (0.3611, 0.1159)}[family]
    assert (parts["vae"].config.scaling_factor, parts["vae"].config.shift_factor) == factors


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="no published architecture"):
        published.components("sd9")


@pytest.mark.parametrize(
    "name, cls",
    [
        ("stabilityai/stable-diffusion-xl-base-1.0", "SDXLModel"),
        ("stabilityai/stable-diffusion-3.5-medium", "SD3Model"),
        ("black-forest-labs/FLUX.1-dev", "FluxModel"),
    ],
)
def test_plan_knows_the_published_models_by_name(name, cls):
    """draft plan's model by name, without any file: the family's class at 1024 px, weights on meta."""
    from draft_core.planning.architectures import meta_model

    model = meta_model(name, torch.bfloat16)
    assert type(model).__name__ == cls and model.family == published.PUBLISHED[name].family
    assert model.image_size == (1024, 1024) and model.dtype == torch.bfloat16
    assert all(p.device.type == "meta" for m in model.modules() for p in m.parameters())
    if model.family != "sdxl":  # the T5 stand-in's ids stay inside T5's vocabulary
        t5 = model.text_encoder_3 if model.family == "sd3" else model.text_encoder_2
        tok = model.tokenizer_3 if model.family == "sd3" else model.tokenizer_2
        ids = tok(
            ["a photo of a cat"], padding="max_length", max_length=tok.model_max_length, return_tensors="pt"
        ).input_ids
        assert int(ids.max()) < t5.config.vocab_size == 32128
