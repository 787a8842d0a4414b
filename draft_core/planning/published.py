"""Published architectures of the larger families, written from their public ``config.json`` files.

``draft plan`` and ``benchmarks/gpu_scale.py`` build these without any download: on the meta
device (shapes only) for a plan, or with random weights on a GPU for a scale benchmark. Each
function returns the keyword arguments of a diffusers/transformers class (or its config object);
``PUBLISHED`` names the hub ids they stand for, with their family and native resolution.

Sources (the hub repositories' component folders): stabilityai/stable-diffusion-xl-base-1.0
(``unet/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``, ``scheduler/``);
stabilityai/stable-diffusion-3.5-medium (``transformer/``, ``vae/``, ``text_encoder{,_2,_3}/``,
``scheduler/``); black-forest-labs/FLUX.1-dev (``transformer/``, ``vae/``, ``text_encoder{,_2}/``,
``scheduler/``); T5-XXL's encoder is google/t5-v1_1-xxl's. Parameter counts are checked against
the published figures in tests/test_published_architectures.py.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- text encoders ---------------------------------------------------------------------------------


def clip_l_config():
    """OpenAI CLIP ViT-L/14's text tower (SD 1.x, SDXL's ``text_encoder``, SD3's and FLUX's CLIP-L)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        max_position_embeddings=77,
        vocab_size=49408,
        hidden_act="quick_gelu",
        projection_dim=768,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def clip_bigg_config():
    """OpenCLIP ViT-bigG/14's text tower (SDXL's and SD3's ``text_encoder_2``, with projection)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_attention_heads=20,
        num_hidden_layers=32,
        max_position_embeddings=77,
        vocab_size=49408,
        hidden_act="gelu",
        projection_dim=1280,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def t5_xxl_config(vocab_size: int = 32128):
    """google/t5-v1_1-xxl's encoder (SD3's ``text_encoder_3``, FLUX's ``text_encoder_2``): gated GELU."""
    from transformers import T5Config

    return T5Config(
        d_model=4096,
        d_ff=10240,
        d_kv=64,
        num_heads=64,
        num_layers=24,
        feed_forward_proj="gated-gelu",
        vocab_size=vocab_size,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
        dropout_rate=0.0,
    )


# -- SDXL --------------------------------------------------------------------------------------------


def sdxl_unet_config() -> dict:
    return dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
        norm_eps=1e-5,
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
    )


def sdxl_vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        sample_size=1024,
        block_out_channels=(128, 256, 512, 512),
        norm_num_groups=32,
        act_fn="silu",
        scaling_factor=0.13025,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        force_upcast=True,
    )


SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


# -- SD3.5 medium ---------------------------------------------------------------------------------


def sd35_medium_transformer_config() -> dict:
    """MMDiT-X: 24 blocks, the first 13 with a second (image-only) attention; RMS-normalised q and k."""
    return dict(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13)),
        qk_norm="rms_norm",
    )


def vae16_config(scaling_factor: float, shift_factor: float) -> dict:
    """The 16-channel VAE of SD3 and FLUX (no quant convolutions); only the factors differ."""
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        layers_per_block=2,
        sample_size=1024,
        block_out_channels=(128, 256, 512, 512),
        norm_num_groups=32,
        act_fn="silu",
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=True,
    )


SD3_SCHEDULER_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


# -- FLUX.1-dev ----------------------------------------------------------------------------------------


def flux_dev_transformer_config() -> dict:
    """19 double-stream and 38 single-stream blocks, width 3072; guidance is an input (distilled)."""
    return dict(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )


FLUX_SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


# -- what the names stand for --------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """A published model draft knows the architecture of without its files."""

    family: str
    resolution: int  # native image side, px
    pipeline: str  # the diffusers pipeline class of its model_index.json


PUBLISHED: dict[str, Published] = {
    "stabilityai/stable-diffusion-xl-base-1.0": Published("sdxl", 1024, "StableDiffusionXLPipeline"),
    "stabilityai/stable-diffusion-3.5-medium": Published("sd3", 1024, "StableDiffusion3Pipeline"),
    "black-forest-labs/FLUX.1-dev": Published("flux", 1024, "FluxPipeline"),
}


def components(family: str) -> dict:
    """The torch modules of ``family``'s published model, built in the current default device
    (``with torch.device("meta")`` for shapes only), under diffusers' component names, plus its
    ``scheduler_config``. Tokenizers are left to the caller."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    if family == "sdxl":
        return dict(
            unet=UNet2DConditionModel(**sdxl_unet_config()),
            vae=AutoencoderKL(**sdxl_vae_config()),
            text_encoder=CLIPTextModel(clip_l_config()),
            text_encoder_2=CLIPTextModelWithProjection(clip_bigg_config()),
            scheduler_config=dict(SDXL_SCHEDULER_CONFIG),
        )
    if family == "sd3":
        return dict(
            transformer=SD3Transformer2DModel(**sd35_medium_transformer_config()),
            vae=AutoencoderKL(**vae16_config(1.5305, 0.0609)),
            text_encoder=CLIPTextModelWithProjection(clip_l_config()),
            text_encoder_2=CLIPTextModelWithProjection(clip_bigg_config()),
            text_encoder_3=T5EncoderModel(t5_xxl_config()),
            scheduler_config=dict(SD3_SCHEDULER_CONFIG),
        )
    if family == "flux":
        return dict(
            transformer=FluxTransformer2DModel(**flux_dev_transformer_config()),
            vae=AutoencoderKL(**vae16_config(0.3611, 0.1159)),
            text_encoder=CLIPTextModel(clip_l_config()),
            text_encoder_2=T5EncoderModel(t5_xxl_config()),
            scheduler_config=dict(FLUX_SCHEDULER_CONFIG),
        )
    raise ValueError(f"no published architecture for family {family!r}; known: sdxl, sd3, flux")
