"""The ``flux`` family: FLUX.1 (dev and schnell) and models built like it, as diffusers' ``FluxPipeline`` runs them.

A ``FluxTransformer2DModel`` (19 double-stream and 38 single-stream blocks in FLUX.1) denoises
16-channel VAE latents packed into 2x2 patches; the prompt enters as T5 token embeddings (the
sequence the transformer attends to) and CLIP's pooled embedding. The sampler sees the UNPACKED
latents [B, C, h, w], drawn as ``FluxPipeline.prepare_latents`` draws them (before packing), so
the same generator gives the same noise; ``denoise`` packs, calls the transformer and unpacks.

FLUX.1-dev is guidance-distilled (``guidance_embeds``): the guidance scale is an input of the
transformer and there is one conditional pass, no unconditional one. FLUX.1-schnell is not:
there a guidance scale other than 1 runs true classifier-free guidance against the empty prompt,
as ``FluxPipeline(true_cfg_scale=g, negative_prompt="")`` does (schnell is sampled with g = 1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from draft_core.models.conditioning import Conditioning
from draft_core.models.family import ModelFamily, guided, token_ids, upcast, uses_cfg

ATTENTION = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",  # image stream (and the single blocks' q, k, v)
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",  # text stream
)
# Feed-forward: both streams' MLPs in the double blocks; in the single blocks the parallel MLP's input
# (proj_mlp) and the shared output projection of attention and MLP (proj_out). "{i}" runs over the
# single blocks: a bare "proj_out" would also match the transformer's final output layer.
FEED_FORWARD = (
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
    "single_transformer_blocks.{i}.proj_out",
)
FLUX_TARGET_SETS = {"attention+ff": ATTENTION + FEED_FORWARD}

# FLUX.1-dev's scheduler/scheduler_config.json (schnell: use_dynamic_shifting false, shift 1.0).
FLUX_DEV_SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
FLUX_SCHNELL_SCHEDULER_CONFIG = {**FLUX_DEV_SCHEDULER_CONFIG, "shift": 1.0, "use_dynamic_shifting": False}
MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's default (and its maximum) T5 length


class FluxModel(ModelFamily):
    """The ``flux`` family. transformer: ``FluxTransformer2DModel``; text_encoder: ``CLIPTextModel``
    (pooled output); text_encoder_2: ``T5EncoderModel``; tokenizer, tokenizer_2: their tokenizers;
    vae: ``AutoencoderKL`` with scaling and shift factors; scheduler_config: a
    ``FlowMatchEulerDiscreteScheduler`` config. ``resolution``: the image side in pixels (default:
    the VAE's ``sample_size``, 1024 for FLUX.1)."""

    family = "flux"
    pipeline_classes = ("FluxPipeline",)
    lora_pipeline = "FluxPipeline"
    denoiser_name = "transformer"
    default_sampler = "euler"
    # FluxPipeline's defaults for FLUX.1-dev: 28 steps, distilled guidance 3.5.
    default_steps = 28
    default_guidance = 3.5
    flow_matching = True
    latent_multiple = 2  # latents are packed into 2x2 patches
    lora_target_sets = FLUX_TARGET_SETS
    # The paper trains attention and feed-forward layers (A.1). An MMDiT has no separate cross-attention:
    # the prompt enters through joint attention, so the default is every attention projection plus the
    # MLPs (diffusers' FLUX DreamBooth-LoRA list, with the single blocks' MLP added).
    default_lora_targets = "attention+ff"
    #: ``draft lora export --format kohya`` writes BFL's block names with q, k, v fused (draft_core.lora.kohya_flux).
    kohya_network_module = "networks.lora_flux"

    @staticmethod
    def kohya_state(modules: dict) -> dict[str, torch.Tensor]:
        from draft_core.lora.kohya_flux import flux_kohya_state

        return flux_kohya_state(modules)

    def __init__(
        self,
        transformer: torch.nn.Module,
        text_encoder: torch.nn.Module,
        text_encoder_2: torch.nn.Module,
        tokenizer: Any,
        tokenizer_2: Any,
        vae: torch.nn.Module,
        scheduler_config: dict,
        name: str = "",
        resolution: int | None = None,
    ) -> None:
        super().__init__(
            {
                "transformer": transformer,
                "text_encoder": text_encoder,
                "text_encoder_2": text_encoder_2,
                "tokenizer": tokenizer,
                "tokenizer_2": tokenizer_2,
                "vae": vae,
            },
            scheduler_config,
            name,
        )
        self.resolution = int(resolution or getattr(vae.config, "sample_size", None) or 1024)
        # T5's length: FluxPipeline's 512, or less when the tokenizer is shorter (the tiny stand-in).
        self.max_sequence_length = min(
            MAX_SEQUENCE_LENGTH, int(getattr(tokenizer_2, "model_max_length", MAX_SEQUENCE_LENGTH))
        )
        self._ids: dict = {}

    # -- what the family is ---------------------------------------------------------------
    @property
    def guidance_distilled(self) -> bool:  # type: ignore[override]
        """FLUX.1-dev: True (the guidance scale is a transformer input); schnell: False."""
        return bool(self.transformer.config.guidance_embeds)

    @classmethod
    def is_guidance_distilled(cls, name: str, revision: str | None = None) -> bool:
        """Whether model ``name`` is distilled, from its transformer's config alone (no weights)."""
        if name in EMBEDDED_TRANSFORMER_CONFIGS:
            return bool(EMBEDDED_TRANSFORMER_CONFIGS[name]().get("guidance_embeds", False))
        local = Path(name).expanduser()
        try:
            if local.exists():
                config = local / "transformer" / "config.json"
            else:
                from huggingface_hub import constants, hf_hub_download

                offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in (
                    "1",
                    "true",
                    "yes",
                    "on",
                )
                config = Path(
                    hf_hub_download(name, "transformer/config.json", revision=revision, local_files_only=offline)
                )
            return bool(json.loads(config.read_text(encoding="utf-8")).get("guidance_embeds", False))
        except Exception:  # unreadable here: loading reports it; FLUX.1-dev, the common case, is distilled
            return True

    @classmethod
    def sampling_defaults(cls, name: str, revision: str | None = None) -> dict[str, Any]:
        """FLUX.1-dev (distilled): 28 steps, guidance 3.5. A model without distilled guidance (FLUX.1-schnell)
        runs true classifier-free guidance for any scale but 1, so 1 (no guidance) and schnell's 4 steps."""
        if cls.is_guidance_distilled(name, revision):
            return super().sampling_defaults(name, revision)
        return {"name": cls.default_sampler, "steps": 4, "guidance_scale": 1.0}

    @property
    def prediction_type(self) -> str:
        return "flow"

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the unpacked latents, as FluxPipeline.prepare_latents sizes them."""
        side = 2 * (self.resolution // (self.vae_scale_factor * 2))
        return (self.transformer.config.in_channels // 4, *self.latent_size((side, side)))

    def lora_targets(self, which=None) -> list[str]:
        targets = super().lora_targets(which)
        singles = range(len(self.transformer.single_transformer_blocks))
        return [t.format(i=i) for t in targets for i in (singles if "{i}" in t else [None])]

    # -- prompts -----------------------------------------------------------------------------
    @torch.no_grad()
    def _embed(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 embeddings [B, L, D], CLIP pooled [B, P]) as FluxPipeline.encode_prompt computes them."""
        prompts = list(prompts)
        clip_ids = token_ids(self.tokenizer, prompts, device=self.text_encoder.device)
        pooled = self.text_encoder(clip_ids, output_hidden_states=False).pooler_output
        t5_ids = token_ids(self.tokenizer_2, prompts, self.max_sequence_length, device=self.text_encoder_2.device)
        embeds = self.text_encoder_2(t5_ids, output_hidden_states=False)[0]
        return embeds.to(self.dtype), pooled.to(self.dtype)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """cond: T5 embeddings, pooled: CLIP's; the empty prompt (for true CFG) only for a model that is not
        guidance-distilled, encoded once."""
        cond, pooled = self._embed(prompts)
        if self.guidance_distilled:
            return Conditioning(cond, None, list(prompts), pooled=pooled)
        if self._uncond is None:
            self._uncond = self._embed([""])
        uncond, uncond_pooled = self._uncond
        return Conditioning(cond, uncond, list(prompts), pooled=pooled, uncond_pooled=uncond_pooled)

    # -- the transformer -------------------------------------------------------------------
    def _positions(self, h: int, w: int, text_len: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(img_ids [h/2 * w/2, 3], txt_ids [L, 3]) as FluxPipeline builds them."""
        key = (h, w, text_len, device, dtype)
        if key not in self._ids:
            from diffusers import FluxPipeline

            img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, device, dtype)
            self._ids = {key: (img_ids, torch.zeros(text_len, 3, device=device, dtype=dtype))}
        return self._ids[key]

    def _transformer(self, x, t, embeds, pooled, guidance) -> torch.Tensor:
        from diffusers import FluxPipeline

        tr, dtype = self.transformer, self.dtype
        b, c, h, w = x.shape
        packed = FluxPipeline._pack_latents(x.to(dtype), b, c, h, w)
        img_ids, txt_ids = self._positions(h, w, embeds.shape[1], x.device, dtype)
        timestep = t.to(x.device).expand(b).to(dtype) / 1000  # on the sample's device, as the UNet puts it
        out = tr(
            hidden_states=packed,
            timestep=timestep,
            guidance=guidance,
            pooled_projections=pooled.to(dtype),
            encoder_hidden_states=embeds.to(dtype),
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return upcast(
            FluxPipeline._unpack_latents(
                out, h * self.vae_scale_factor, w * self.vae_scale_factor, self.vae_scale_factor
            )
        )

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance=1.0) -> torch.Tensor:
        """Velocity [B, C, h, w] at unpacked latents ``x``: distilled guidance as an input, or true CFG."""
        b = x.shape[0]
        if self.guidance_distilled:
            g = guidance.to(torch.float32) if torch.is_tensor(guidance) else torch.full([1], float(guidance))
            g = g.reshape(-1).to(x.device).expand(b)
            return self._transformer(x, t, cond.cond, cond.pooled, g)
        if uses_cfg(guidance):
            uncond = cond.uncond.expand(b, -1, -1)
            uncond_pooled = cond.uncond_pooled.expand(b, -1)
            out = self._transformer(
                torch.cat([x, x]), t, torch.cat([uncond, cond.cond]), torch.cat([uncond_pooled, cond.pooled]), None
            )
            out_u, out_c = out.chunk(2)
            return guided(out_u, out_c, guidance)
        return self._transformer(x, t, cond.cond, cond.pooled, None)

    def timestep_kwargs(self, num_steps: int) -> dict:
        """FluxPipeline's schedule: sigmas = linspace(1, 1/n, n), shifted by mu of the image's token count."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        cfg = self.scheduler_config
        _, h, w = self.sample_shape
        mu = calculate_shift(
            (h // 2) * (w // 2),
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        sigmas = None if cfg.get("use_flow_sigmas") else np.linspace(1.0, 1 / num_steps, num_steps)
        return {"sigmas": sigmas, "mu": mu}

    # -- files ------------------------------------------------------------------------------
    def pipeline(self):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config),
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            transformer=self.transformer,
        )

    def save_pretrained(self, folder: str | Path) -> Path:
        """A folder ``FluxPipeline.from_pretrained`` loads (model_index.json + one subfolder per component)."""
        folder = Path(folder)
        self.pipeline().save_pretrained(folder)
        return folder

    @classmethod
    def from_pretrained(cls, source: str, dtype: torch.dtype, resolution: int | None = None, **kw) -> FluxModel:
        """Components from a diffusers folder or hub id, loaded by FluxPipeline itself (``kw``: ``revision``)."""
        from diffusers import FluxPipeline

        pipe = FluxPipeline.from_pretrained(source, dtype=dtype, **kw)
        return cls(
            pipe.transformer,
            pipe.text_encoder,
            pipe.text_encoder_2,
            pipe.tokenizer,
            pipe.tokenizer_2,
            pipe.vae,
            dict(pipe.scheduler.config),
            name=source,
            resolution=resolution,
        )


# -- tiny-random-flux ------------------------------------------------------------------------
def tiny_transformer_config() -> dict:
    """FLUX.1-dev's structure at test size: 1 double and 1 single block, width 32, 4 latent channels."""
    return dict(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )


def tiny_vae_config() -> dict:
    """A 4x VAE (32 px images, 8x8 latents) with FLUX.1's scaling and shift factors and no quant convs."""
    return dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def tiny_t5_config():
    from transformers import T5Config

    # The CLIP tokenizer stands in for T5's (there is no offline sentencepiece vocabulary): its vocabulary size.
    return T5Config(
        vocab_size=49408,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=49407,
        eos_token_id=49407,
    )


EMBEDDED_TRANSFORMER_CONFIGS = {"tiny-random-flux": tiny_transformer_config}


def build_tiny_random_flux(seed: int = 0, guidance_embeds: bool = True) -> FluxModel:
    """``tiny-random-flux``: FLUX.1-dev's classes from small configs, random weights from ``seed``.
    ``guidance_embeds=False`` gives a schnell-like model (not distilled, schnell's scheduler config)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    from draft_core.models.tiny import tiny_text_config
    from draft_core.models.tokenizer import offline_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**{**tiny_transformer_config(), "guidance_embeds": guidance_embeds})
        vae = AutoencoderKL(**tiny_vae_config())
        text_encoder = CLIPTextModel(tiny_text_config())
        text_encoder_2 = T5EncoderModel(tiny_t5_config())
    scheduler_config = FLUX_DEV_SCHEDULER_CONFIG if guidance_embeds else FLUX_SCHNELL_SCHEDULER_CONFIG
    return FluxModel(
        transformer,
        text_encoder,
        text_encoder_2,
        offline_clip_tokenizer(),
        offline_clip_tokenizer(16),
        vae,
        scheduler_config,
        name="tiny-random-flux" if guidance_embeds else "tiny-random-flux-schnell",
    )
