"""``tiny-random``: Stable Diffusion's architecture from small configs with random weights.

Same component classes and scheduler config as SD 1.4 (REFERENCE §2), sized for tests:
64 px images, an 8x VAE, 8x8 latents. Built offline and deterministically from a seed.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from draft_core.models.pipeline import DiffusionModel
from draft_core.models.tokenizer import offline_clip_tokenizer

# SD 1.4's scheduler_config.json; samplers convert it to their own scheduler class.
SD14_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}

TEXT_WIDTH = 32


def tiny_unet_config(sample_size: int = 8, cross_attention_dim: int = TEXT_WIDTH) -> dict:
    return dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        norm_num_groups=32,
    )


def tiny_vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )


def tiny_text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_act="quick_gelu",
        projection_dim=TEXT_WIDTH,
    )


def build_tiny_random(seed: int = 0, scheduler_config: dict | None = None) -> DiffusionModel:
    """The tiny SD-architecture model; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config())
        vae = AutoencoderKL(**tiny_vae_config())
        text_encoder = CLIPTextModel(tiny_text_config())
    return DiffusionModel(
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=offline_clip_tokenizer(),
        scheduler_config=scheduler_config or SD14_SCHEDULER_CONFIG,
        vae=vae,
        name="tiny-random",
    )
