"""``tiny-random-sd3``: Stable Diffusion 3.5's architecture from small configs with random weights.

The component classes of SD3.5 Medium (an MMDiT with RMS-normed q/k and one dual-attention block,
two CLIP text encoders with projections, a T5 encoder, a 16-channel VAE with a shift factor) and
its scheduler config, sized for tests: 8x8 latents, an 8x VAE, 64 px images. The CLIPs differ in
width (16, 24) and T5 is wider (48) so the pipeline's zero-padding of CLIP states is exercised.
Built offline and deterministically from a seed; the offline CLIP tokenizer stands in for T5's.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from draft_core.models.families.sd3 import SD3Model
from draft_core.models.tokenizer import offline_clip_tokenizer

# stabilityai/stable-diffusion-3.5-medium's scheduler/scheduler_config.json.
SD35_SCHEDULER_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
CLIP_WIDTHS = (16, 24)
T5_WIDTH = 48


def tiny_clip_config(width: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=width,
        intermediate_size=32,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_act="gelu",
        projection_dim=width,
    )


def tiny_t5_config() -> T5Config:
    return T5Config(
        vocab_size=49408,
        d_model=T5_WIDTH,
        d_kv=12,
        d_ff=64,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )


def tiny_transformer_config(sample_size: int = 8, in_channels: int = 16, sd35: bool = True) -> dict:
    """sd35=False: SD3 Medium's block layout (no q/k RMS norm, no dual attention)."""
    return dict(
        sample_size=sample_size,
        patch_size=2,
        in_channels=in_channels,
        out_channels=in_channels,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=sum(CLIP_WIDTHS),
        pos_embed_max_size=16,
        dual_attention_layers=(0,) if sd35 else (),
        qk_norm="rms_norm" if sd35 else None,
    )


def tiny_vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_tiny_random_sd3(
    seed: int = 0, scheduler_config: dict | None = None, t5: bool = True, sd35: bool = True
) -> SD3Model:
    """The tiny SD3.5-architecture model; the same seed gives the same weights. t5=False: no T5 (zeros);
    sd35=False: SD3 Medium's transformer blocks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**tiny_transformer_config(sd35=sd35))
        vae = AutoencoderKL(**tiny_vae_config())
        text_encoder = CLIPTextModelWithProjection(tiny_clip_config(CLIP_WIDTHS[0]))
        text_encoder_2 = CLIPTextModelWithProjection(tiny_clip_config(CLIP_WIDTHS[1]))
        text_encoder_3 = T5EncoderModel(tiny_t5_config()) if t5 else None
    tokenizer = offline_clip_tokenizer()
    return SD3Model(
        transformer=transformer,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer if t5 else None,
        scheduler_config=scheduler_config or SD35_SCHEDULER_CONFIG,
        vae=vae,
        name="tiny-random-sd3",
    )
