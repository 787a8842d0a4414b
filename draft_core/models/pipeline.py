"""The ``sd`` family: Stable Diffusion 1.x/2.x-style models (a UNet, one CLIP text encoder, optional VAE).

A latent model (Stable Diffusion) decodes its samples through the VAE; a pixel-space model (no
VAE, such as the embedded ``digits``) samples images directly in [-1, 1]. Either way ``decode``
returns images in [0, 1] and is differentiable. ``DiffusionModel`` is the family's class (its name
predates the other families); ``ModelFamily`` is the interface all of them share.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from draft_core.models.conditioning import Conditioning
from draft_core.models.family import ModelFamily, guided, token_ids, upcast, uses_cfg

__all__ = ["DiffusionModel", "SDModel", "upcast"]

FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
CROSS_ATTENTION = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
UNET_TARGET_SETS = {
    # The paper's (Appendix A.1): cross-attention and feed-forward layers of every transformer block.
    "cross-attention+ff": CROSS_ATTENTION + FEED_FORWARD,
    "attention+ff": ("to_q", "to_k", "to_v", "to_out.0") + FEED_FORWARD,
}


class DiffusionModel(ModelFamily):
    """The ``sd`` family. unet: a diffusers ``UNet2DConditionModel``; text_encoder: transformers
    ``CLIPTextModel``; vae: ``AutoencoderKL`` or None for pixel space; scheduler_config: a diffusers
    scheduler config dict (its betas, prediction type, offsets); samplers build their own scheduler
    from it."""

    family = "sd"
    pipeline_classes = ("StableDiffusionPipeline", "DraftPixelPipeline")
    lora_pipeline = "StableDiffusionPipeline"
    denoiser_name = "unet"
    per_sample_timesteps = True
    lora_target_sets = UNET_TARGET_SETS
    default_lora_targets = "cross-attention+ff"

    def __init__(
        self,
        unet: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        scheduler_config: dict,
        vae: torch.nn.Module | None = None,
        name: str = "",
    ) -> None:
        super().__init__(
            {"unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "vae": vae}, scheduler_config, name
        )

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, *self.latent_size(size))

    @torch.no_grad()
    def _embed(self, prompts: Sequence[str]) -> torch.Tensor:
        # As diffusers' StableDiffusionPipeline.encode_prompt: pad to the tokenizer's
        # max length, take the last hidden state.
        ids = token_ids(self.tokenizer, prompts, device=self.text_encoder.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode prompts once; the empty-prompt embedding is computed once per model."""
        if self._uncond is None:
            self._uncond = self._embed([""])
        return Conditioning(self._embed(prompts), self._uncond, list(prompts))

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance=1.0) -> torch.Tensor:
        unet = self.unet
        x = x.to(self.dtype)
        if uses_cfg(guidance):
            uncond = cond.uncond.expand(cond.cond.shape[0], -1, -1)
            t = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim else t  # per-sample timesteps, both halves
            out = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond.cond])).sample
            out_u, out_c = upcast(out).chunk(2)
            return guided(out_u, out_c, guidance)
        return upcast(unet(x, t, encoder_hidden_states=cond.cond).sample)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write a diffusers folder (model_index.json + one subfolder per component)."""
        from diffusers import DDIMScheduler

        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        if self.vae is not None:
            self.vae.save_pretrained(folder / "vae")
        DDIMScheduler.from_config(self.scheduler_config).save_pretrained(folder / "scheduler")
        index = {
            "_class_name": "StableDiffusionPipeline" if self.vae is not None else "DraftPixelPipeline",
            "_diffusers_version": __import__("diffusers").__version__,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "vae": ["diffusers", "AutoencoderKL"] if self.vae is not None else [None, None],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, source: str, dtype: torch.dtype, **kw) -> DiffusionModel:
        """Components from a diffusers folder or hub id (``kw``: ``revision``)."""
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        local = Path(source)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **kw)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype, **kw)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
        scheduler_config = dict(DDIMScheduler.load_config(source, subfolder="scheduler", **kw))
        has_vae = (local / "vae").is_dir() if local.exists() else True
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kw) if has_vae else None
        return cls(unet, text_encoder, tokenizer, scheduler_config, vae=vae, name=source)

    def pipeline(self):
        """The family's diffusers pipeline on these components; NotImplementedError for a pixel-space model
        (no VAE), which no diffusers pipeline runs."""
        if self.vae is None:
            raise NotImplementedError(
                f"{self.name or 'this model'} is a pixel-space model (no VAE): no diffusers pipeline runs it"
            )
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


SDModel = DiffusionModel
