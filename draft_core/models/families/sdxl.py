"""The ``sdxl`` family: Stable Diffusion XL (a UNet conditioned on text, pooled text and image size;
two CLIP text encoders; a VAE), as diffusers' ``StableDiffusionXLPipeline`` runs it.

Prompts are encoded as the pipeline's ``encode_prompt``: the penultimate hidden states of both text
encoders concatenated ([B, 77, D1 + D2]) and the pooled, projected output of the second ([B, P]). The
empty prompt is zeros when the pipeline's ``force_zeros_for_empty_prompt`` is set (SDXL base), else
the encoded "". Each UNet call gets the pooled embedding and the size ids (original size, crop
(0, 0), target size: all the image size) as ``added_cond_kwargs``. ``tiny-random-sdxl`` is the
architecture from small configs with random weights, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from draft_core.models.conditioning import Conditioning
from draft_core.models.family import ModelFamily, guided, token_ids, upcast, uses_cfg
from draft_core.models.pipeline import UNET_TARGET_SETS

# stabilityai/stable-diffusion-xl-base-1.0's scheduler/scheduler_config.json (samplers build theirs from it).
SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


class SDXLModel(ModelFamily):
    """unet: ``UNet2DConditionModel`` with ``addition_embed_type="text_time"``; text_encoder:
    ``CLIPTextModel``; text_encoder_2: ``CLIPTextModelWithProjection``; tokenizer, tokenizer_2:
    ``CLIPTokenizer``; vae: ``AutoencoderKL``; force_zeros_for_empty_prompt: the pipeline's config."""

    family = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    lora_pipeline = "StableDiffusionXLPipeline"
    denoiser_name = "unet"
    lora_target_sets = UNET_TARGET_SETS
    default_lora_targets = "cross-attention+ff"
    # kohya-ss/sd-scripts' SDXL names: the two text encoders are te1 and te2.
    kohya_prefixes = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}

    def __init__(
        self,
        unet: torch.nn.Module,
        text_encoder: torch.nn.Module,
        text_encoder_2: torch.nn.Module,
        tokenizer: Any,
        tokenizer_2: Any,
        vae: torch.nn.Module,
        scheduler_config: dict,
        force_zeros_for_empty_prompt: bool = True,
        name: str = "",
    ) -> None:
        super().__init__(
            {
                "unet": unet,
                "text_encoder": text_encoder,
                "text_encoder_2": text_encoder_2,
                "tokenizer": tokenizer,
                "tokenizer_2": tokenizer_2,
                "vae": vae,
            },
            scheduler_config,
            name,
        )
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, *self.latent_size(size))

    # -- prompts -----------------------------------------------------------------------
    @torch.no_grad()
    def _embed(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, L, D1 + D2] penultimate hidden states of both encoders, [B, P] pooled from the second)."""
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = token_ids(tokenizer, prompts, device=encoder.device)
            out = encoder(ids, output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # the pipeline's rule: the projected output of encoder 2
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        return torch.cat(hidden, dim=-1).to(self.dtype), pooled.to(self.dtype)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """cond [B, 77, D1 + D2], pooled [B, P]; the empty prompt's [1, ...] once per model (zeros when
        ``force_zeros_for_empty_prompt``, as the pipeline without a negative prompt)."""
        cond, pooled = self._embed(prompts)
        if self._uncond is None:
            if self.force_zeros_for_empty_prompt:
                self._uncond = (torch.zeros_like(cond[:1]), torch.zeros_like(pooled[:1]))
            else:
                self._uncond = self._embed([""])
        uncond, uncond_pooled = self._uncond
        return Conditioning(cond, uncond, list(prompts), pooled=pooled, uncond_pooled=uncond_pooled)

    # -- the denoiser --------------------------------------------------------------------
    def time_ids(self, x: torch.Tensor) -> torch.Tensor:
        """[1, 6] SDXL size conditioning for samples like ``x``: original size (H, W), crop (0, 0),
        target size (H, W), where (H, W) is the image size of the sample."""
        h, w = x.shape[-2] * self.vae_scale_factor, x.shape[-1] * self.vae_scale_factor
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=self.dtype, device=x.device)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance=1.0) -> torch.Tensor:
        unet = self.unet
        x = x.to(self.dtype)
        batch = x.shape[0]
        ids = self.time_ids(x)
        if uses_cfg(guidance):
            # As the pipeline: one batch [uncond; cond] with the pooled embeddings and size ids alike.
            uncond = cond.uncond.expand(batch, -1, -1)
            uncond_pooled = cond.uncond_pooled.expand(batch, -1)
            added = {"text_embeds": torch.cat([uncond_pooled, cond.pooled]), "time_ids": ids.expand(2 * batch, -1)}
            out = unet(
                torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond.cond]), added_cond_kwargs=added
            ).sample
            out_u, out_c = upcast(out).chunk(2)
            return guided(out_u, out_c, guidance)
        added = {"text_embeds": cond.pooled, "time_ids": ids.expand(batch, -1)}
        return upcast(unet(x, t, encoder_hidden_states=cond.cond, added_cond_kwargs=added).sample)

    def _decode(self, sample: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is None or std is None:
            return super()._decode(sample)
        # A VAE with per-channel latent statistics (the pipeline's denormalisation).
        view = dict(device=sample.device, dtype=self.vae.dtype)
        latents = sample.to(self.vae.dtype) * torch.tensor(std, **view).view(1, -1, 1, 1) / cfg.scaling_factor
        latents = latents + torch.tensor(mean, **view).view(1, -1, 1, 1)
        return (upcast(self.vae.decode(latents).sample) / 2 + 0.5).clamp(0, 1)

    # -- files -------------------------------------------------------------------------
    def pipeline(self):
        """``StableDiffusionXLPipeline`` on these components, with a DDIM scheduler from the config."""
        from diffusers import DDIMScheduler, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler_config),
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )

    def save_pretrained(self, folder: str | Path) -> Path:
        """A diffusers folder ``StableDiffusionXLPipeline.from_pretrained`` loads."""
        folder = Path(folder)
        self.pipeline().save_pretrained(folder, safe_serialization=True)
        return folder

    @classmethod
    def from_pretrained(cls, source: str, dtype: torch.dtype, **kw) -> SDXLModel:
        """Components from a diffusers folder or hub id (``kw``: ``revision``)."""
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        index = StableDiffusionXLPipeline.load_config(source, **kw)
        return cls(
            unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **kw),
            text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype, **kw),
            text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
                source, subfolder="text_encoder_2", torch_dtype=dtype, **kw
            ),
            tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw),
            tokenizer_2=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **kw),
            vae=AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kw),
            scheduler_config=dict(DDIMScheduler.load_config(source, subfolder="scheduler", **kw)),
            force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
            name=source,
        )


# -- tiny-random-sdxl --------------------------------------------------------------------------
TEXT_WIDTH = 32  # each text encoder's width; the UNet attends to both: 2 x 32
TIME_EMBED = 8  # addition_time_embed_dim: 6 size ids x 8 + the pooled 32 = 80 inputs to add_embedding


def tiny_sdxl_unet_config(sample_size: int = 8) -> dict:
    """SDXL's UNet layout (no attention at the first level, linear projections, text_time
    conditioning), as diffusers' own SDXL pipeline tests size it."""
    return dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_WIDTH,
        cross_attention_dim=2 * TEXT_WIDTH,
        norm_num_groups=32,
    )


def tiny_sdxl_vae_config() -> dict:
    """A 2x VAE (16 px images from 8x8 latents) with SDXL's scaling factor."""
    return dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32),
        latent_channels=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32,
        sample_size=16,
        scaling_factor=0.13025,
        force_upcast=True,
    )


def _tiny_text_config(act: str):
    from transformers import CLIPTextConfig

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
        hidden_act=act,
        projection_dim=TEXT_WIDTH,
    )


def build_tiny_random_sdxl(
    seed: int = 0, scheduler_config: dict | None = None, force_zeros_for_empty_prompt: bool = True
) -> SDXLModel:
    """The tiny SDXL-architecture model; the same seed gives the same weights. Encoder 1 is CLIP
    ViT-L-like (quick_gelu), encoder 2 OpenCLIP-bigG-like (gelu, projection, "!" padding)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from draft_core.models.tokenizer import _vocab_and_merges, offline_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_sdxl_unet_config())
        vae = AutoencoderKL(**tiny_sdxl_vae_config())
        text_encoder = CLIPTextModel(_tiny_text_config("quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config("gelu"))
    vocab, merges = _vocab_and_merges()
    tokenizer_2 = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77, pad_token="!")
    return SDXLModel(
        unet,
        text_encoder,
        text_encoder_2,
        offline_clip_tokenizer(),
        tokenizer_2,
        vae,
        scheduler_config or SDXL_SCHEDULER_CONFIG,
        force_zeros_for_empty_prompt,
        name="tiny-random-sdxl",
    )
