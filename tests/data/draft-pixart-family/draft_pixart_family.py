"""The ``pixart-sigma`` model family for draft: PixArt-Sigma's ``PixArtTransformer2DModel`` conditioned on
T5 token embeddings with a text attention mask, as diffusers' ``PixArtSigmaPipeline`` runs it.

A worked external family (docs/plugins.md, "Model families"): what a plugin author writes for a
diffusers model draft does not know. ``PixArtSigmaPipeline`` has no LoRA loader, so the LoRA files
follow diffusers' layout through the core's provided hooks (``lora_pipeline`` left empty).
``build_tiny_pixart_sigma`` builds a small random model of the same classes, offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from draft_core import hookimpl
from draft_core.models.conditioning import Conditioning
from draft_core.models.family import ModelFamily, guided, upcast, uses_cfg


class PixArtSigmaModel(ModelFamily):
    """transformer: ``PixArtTransformer2DModel``; text_encoder: ``T5EncoderModel``; tokenizer: its T5
    tokenizer; vae: ``AutoencoderKL``; scheduler_config: the scheduler config its samplers start from."""

    family = "pixart-sigma"
    pipeline_classes = ("PixArtSigmaPipeline",)
    denoiser_name = "transformer"
    default_steps = 20  # PixArtSigmaPipeline's defaults: 20 steps, guidance 4.5
    default_guidance = 4.5
    lora_target_sets = {"attention+ff": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")}
    default_lora_targets = "attention+ff"
    max_sequence_length = 300  # PixArt-Sigma's T5 length

    def __init__(self, transformer, text_encoder, tokenizer, vae, scheduler_config: dict, name: str = "") -> None:
        super().__init__(
            {"transformer": transformer, "text_encoder": text_encoder, "tokenizer": tokenizer, "vae": vae},
            scheduler_config,
            name,
        )
        self.max_sequence_length = min(self.max_sequence_length, tokenizer.model_max_length)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        size = self.transformer.config.sample_size
        return (self.transformer.config.in_channels, *self.latent_size((size, size)))

    @torch.no_grad()
    def _embed(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # As PixArtSigmaPipeline.encode_prompt (clean_caption=False): lower-cased, padded to the T5 length.
        text = self.tokenizer(
            [p.lower().strip() for p in prompts],
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        mask = text.attention_mask.to(self.text_encoder.device)
        embeds = self.text_encoder(text.input_ids.to(self.text_encoder.device), attention_mask=mask)[0]
        return embeds.to(self.dtype), mask

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """T5 embeddings with their attention mask (``extra["mask"]``); the empty prompt's once per model."""
        if self._uncond is None:
            self._uncond = self._embed([""])
        cond, mask = self._embed(prompts)
        uncond, uncond_mask = self._uncond
        return Conditioning(cond, uncond, list(prompts), extra={"mask": mask, "uncond_mask": uncond_mask})

    def _transformer(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.transformer(
            x.to(self.dtype),
            encoder_hidden_states=embeds,
            encoder_attention_mask=mask,
            timestep=t.reshape(-1).to(x.device).expand(x.shape[0]),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]
        return upcast(out[:, : x.shape[1]])  # the learned variance's channels are not used for sampling

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance=1.0) -> torch.Tensor:
        if uses_cfg(guidance):  # one batched pass, the empty prompt first (as the pipeline)
            pairs = cond.guidance_pairs()
            out_u, out_c = self._transformer(torch.cat([x, x]), t, pairs["cond"], pairs["mask"]).chunk(2)
            return guided(out_u, out_c, guidance)
        return self._transformer(x, t, cond.cond, cond.extra["mask"])

    def pipeline(self):
        from diffusers import DDIMScheduler, PixArtSigmaPipeline

        return PixArtSigmaPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            transformer=self.transformer,
            scheduler=DDIMScheduler.from_config(self.scheduler_config),
        )

    def save_pretrained(self, folder: str | Path) -> Path:
        self.pipeline().save_pretrained(folder)
        return Path(folder)

    @classmethod
    def from_pretrained(cls, source: str, dtype: torch.dtype, **kw: Any) -> PixArtSigmaModel:
        from diffusers import PixArtSigmaPipeline

        pipe = PixArtSigmaPipeline.from_pretrained(source, torch_dtype=dtype, **kw)
        return cls(
            pipe.transformer, pipe.text_encoder, pipe.tokenizer, pipe.vae, dict(pipe.scheduler.config), name=source
        )

    @classmethod
    def meta_model(cls, source: str, dtype: torch.dtype) -> PixArtSigmaModel:
        """For ``draft plan``: the components from their configs alone, on the meta device."""
        from diffusers import AutoencoderKL, DDIMScheduler, PixArtTransformer2DModel
        from transformers import AutoTokenizer, T5Config, T5EncoderModel

        with torch.device("meta"):
            transformer = PixArtTransformer2DModel.from_config(
                PixArtTransformer2DModel.load_config(source, subfolder="transformer")
            )
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(source, subfolder="vae"))
            text_encoder = T5EncoderModel(T5Config.from_pretrained(source, subfolder="text_encoder"))
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        scheduler_config = dict(DDIMScheduler.load_config(source, subfolder="scheduler"))
        return cls(
            transformer.to(dtype), text_encoder.to(dtype), tokenizer, vae.to(dtype), scheduler_config, name=source
        )


@hookimpl
def register_models(register) -> None:
    register("pixart-sigma", PixArtSigmaModel)


# -- a tiny random model (tests) ---------------------------------------------------------------------
# PixArt-Sigma's scheduler: DDPM's linear betas; prediction of the noise.
SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 0,
}
WORDS = ("a", "cat", "dog", "photo", "of", "the", "on", "in", "red", "blue", "hill", "tree")


def tiny_t5_tokenizer(max_length: int = 16):
    """A T5 (unigram) tokenizer with a small vocabulary: letters, digits and a few words, built offline."""
    from transformers import T5Tokenizer

    pieces = ["▁"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-") + [f"▁{w}" for w in WORDS]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -1.0 - i / 100) for i, p in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def build_tiny_pixart_sigma(seed: int = 0) -> PixArtSigmaModel:
    """PixArt-Sigma's classes at test size: a 1-layer transformer on 8x8 latents, a 2x VAE (16 px images),
    a 1-layer T5 of width 16; the same seed gives the same weights."""
    from diffusers import AutoencoderKL, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = PixArtTransformer2DModel(
            sample_size=8,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            in_channels=4,
            out_channels=8,
            cross_attention_dim=16,
            caption_channels=16,
            norm_type="ada_norm_single",
            patch_size=2,
            use_additional_conditions=False,
        )
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=16,
                d_kv=8,
                d_ff=32,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                is_encoder_decoder=False,
            )
        )
        vae = AutoencoderKL(
            block_out_channels=(16, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16,
            scaling_factor=0.13025,
        )
    return PixArtSigmaModel(transformer, text_encoder, tokenizer, vae, SCHEDULER_CONFIG, name="tiny-pixart-sigma")
