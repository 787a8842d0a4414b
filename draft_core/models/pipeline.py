"""DiffusionModel: the components a sampler drives (UNet, text encoder, tokenizer, optional VAE).

A latent model (Stable Diffusion) decodes its samples through the VAE; a pixel-space
model (no VAE) samples images directly in [-1, 1]. Either way ``decode`` returns
images in [0, 1] and is differentiable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor

from draft_core.models.conditioning import Conditioning


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32: half-precision model outputs are carried in float32; float64 stays."""
    return x if x.dtype == torch.float64 else x.float()


class DiffusionModel:
    """Frozen text-to-image components plus the scheduler config they were trained with.

    unet: a diffusers ``UNet2DConditionModel``; text_encoder: transformers ``CLIPTextModel``;
    vae: ``AutoencoderKL`` or None for pixel space; scheduler_config: a diffusers scheduler
    config dict (its betas, prediction type, offsets); samplers build their own scheduler
    from it.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        scheduler_config: dict,
        vae: torch.nn.Module | None = None,
        name: str = "",
    ) -> None:
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.vae = vae
        self.scheduler_config = dict(scheduler_config)
        self.name = name
        self._uncond: torch.Tensor | None = None
        # True / False / "auto" (train.checkpoint_decode): see draft_core.memory.
        self.checkpoint_decode: bool | str = "auto"
        for module in self.modules():
            module.requires_grad_(False)
            module.eval()

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.unet, self.text_encoder, self.vae) if m is not None]

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the space the sampler works in."""
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, *size)

    @property
    def image_size(self) -> tuple[int, int]:
        _, h, w = self.sample_shape
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        for module in self.modules():
            # Only cast when needed: diffusers warns on every dtype cast.
            same = dtype is None or module.dtype == dtype
            module.to(device=device) if same else module.to(device=device, dtype=dtype)
        self._uncond = None
        return self

    @torch.no_grad()
    def _embed(self, prompts: Sequence[str]) -> torch.Tensor:
        # As diffusers' StableDiffusionPipeline.encode_prompt: pad to the tokenizer's
        # max length, take the last hidden state.
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode prompts once; the empty-prompt embedding is computed once per model."""
        if self._uncond is None:
            self._uncond = self._embed([""])
        return Conditioning(self._embed(prompts), self._uncond, list(prompts))

    def make_noise(
        self, batch: int, generator: torch.Generator | None = None, dtype=torch.float32
    ) -> torch.Tensor:
        """Initial noise [B, C, h, w], drawn as diffusers' pipelines draw it."""
        return randn_tensor((batch, *self.sample_shape), generator=generator, device=self.device, dtype=dtype)

    def decode(self, sample: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] sample -> [B, 3, H, W] float32 images in [0, 1], differentiably.

        Where gradients flow, the VAE's activations are recomputed in the backward pass
        instead of kept, one image at a time (``checkpoint_decode``; draft_core.memory)."""
        import draft_core.memory as memory

        if memory.wants(self.checkpoint_decode, self.vae is not None) and memory.grad_flows(sample):
            # One region per image: the backward pass recomputes (and holds) one image's decoder at a time.
            return torch.cat([memory.run(self._decode, sample[i : i + 1]) for i in range(sample.shape[0])])
        return self._decode(sample)

    def _decode(self, sample: torch.Tensor) -> torch.Tensor:
        if self.vae is not None:
            cfg = self.vae.config
            latents = sample.to(self.vae.dtype) / cfg.scaling_factor
            if getattr(cfg, "shift_factor", None):
                latents = latents + cfg.shift_factor
            sample = self.vae.decode(latents).sample
        images = (upcast(sample) / 2 + 0.5).clamp(0, 1)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return images

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
        import json

        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        return folder
