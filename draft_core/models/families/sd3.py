"""The ``sd3`` family: Stable Diffusion 3 and 3.5 (an MMDiT transformer trained with rectified flow).

Components as diffusers' ``StableDiffusion3Pipeline`` holds them: ``transformer``
(``SD3Transformer2DModel``), two CLIP text encoders with projections (``text_encoder``: CLIP-L,
``text_encoder_2``: CLIP-G), ``text_encoder_3`` (T5, or None: the pipeline then feeds zeros in
place of T5's tokens), their tokenizers, ``vae`` (``AutoencoderKL`` with a shift factor, or None
for a pixel-space model) and a ``FlowMatchEulerDiscreteScheduler`` config. The denoiser predicts
the flow velocity v = ε − x0, so the family's samplers are flow samplers (``euler``, ``flow-sde``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from draft_core.models.conditioning import Conditioning
from draft_core.models.family import ModelFamily, guided, token_ids, upcast, uses_cfg

#: The joint attention's projections, image stream and text stream: the default targets of diffusers'
#: SD3 DreamBooth-LoRA script (examples/dreambooth/train_dreambooth_lora_sd3.py) and of Flow-GRPO's
#: SD3.5 runs. The ``attn.`` prefix leaves SD3.5's extra image-only attention (``attn2``) alone.
JOINT_ATTENTION = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
MMDIT_TARGET_SETS = {
    "attention": JOINT_ATTENTION,
    # Every attention projection (attn and SD3.5's attn2) and both streams' feed-forward layers.
    "attention+ff": (
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_add_out",
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    ),
}

#: StableDiffusion3Pipeline's default T5 sequence length (also the length of the zeros without T5).
MAX_SEQUENCE_LENGTH = 256
COMPONENTS = (
    "transformer",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
    "vae",
)


def flow_shift_mu(image_seq_len: int, config: dict) -> float:
    """The dynamic-shifting ``mu`` StableDiffusion3Pipeline computes: linear in the image's token count
    between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift). ``config``: the
    scheduler's config with its defaults filled in (the pipeline reads ``scheduler.config``, where
    an unset max_shift is the scheduler's 1.15, not the pipeline's fallback 1.16)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.16)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + base_shift - slope * base_len


class SD3Model(ModelFamily):
    """The ``sd3`` family. Conditioning: cond [B, 77 + L_T5, joint_attention_dim] (the two CLIPs'
    penultimate states side by side, zero-padded to T5's width, then T5's states along the sequence);
    pooled [B, P] (both CLIPs' projected text embeddings side by side); uncond/uncond_pooled the empty
    prompt's, [1, ...]."""

    family = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    lora_pipeline = "StableDiffusion3Pipeline"
    denoiser_name = "transformer"
    default_sampler = "euler"
    flow_matching = True
    per_sample_timesteps = True
    lora_target_sets = MMDIT_TARGET_SETS
    default_lora_targets = "attention"

    def __init__(
        self,
        transformer: torch.nn.Module,
        text_encoder: torch.nn.Module,
        text_encoder_2: torch.nn.Module,
        tokenizer: Any,
        tokenizer_2: Any,
        scheduler_config: dict,
        text_encoder_3: torch.nn.Module | None = None,
        tokenizer_3: Any = None,
        vae: torch.nn.Module | None = None,
        name: str = "",
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    ) -> None:
        if text_encoder_3 is not None and tokenizer_3 is None:
            raise ValueError("text_encoder_3 (T5) needs tokenizer_3.")
        components = dict(
            transformer=transformer,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            text_encoder_3=text_encoder_3,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            tokenizer_3=tokenizer_3,
            vae=vae,
        )
        super().__init__(components, scheduler_config, name)
        self.max_sequence_length = max_sequence_length

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.transformer.config
        size = cfg.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (cfg.in_channels, *self.latent_size(size))

    @property
    def prediction_type(self) -> str:
        return "flow"

    # -- prompts -----------------------------------------------------------------------
    def _clip(self, prompts: list[str], which: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate hidden states [B, 77, D_i], projected text embeddings [B, P_i]) of CLIP ``which``."""
        tokenizer = (self.tokenizer, self.tokenizer_2)[which]
        encoder = (self.text_encoder, self.text_encoder_2)[which]
        length = self.tokenizer.model_max_length  # the pipeline pads both CLIPs to the first's length
        ids = token_ids(tokenizer, prompts, length, device=encoder.device)
        out = encoder(ids, output_hidden_states=True)
        return out.hidden_states[-2], out[0]

    def _t5(self, prompts: list[str]) -> torch.Tensor:
        """T5's last hidden states [B, L_T5, D_T5], or zeros of the transformer's joint width without T5."""
        if self.text_encoder_3 is None:
            return torch.zeros(
                len(prompts),
                self.max_sequence_length,
                self.transformer.config.joint_attention_dim,
                device=self.device,
                dtype=self.text_encoder.dtype,
            )
        ids = token_ids(self.tokenizer_3, prompts, self.max_sequence_length, device=self.text_encoder_3.device)
        return self.text_encoder_3(ids)[0]

    @torch.no_grad()
    def _embed(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = list(prompts)
        states_l, pooled_l = self._clip(prompts, 0)
        states_g, pooled_g = self._clip(prompts, 1)
        clip = torch.cat([states_l, states_g], dim=-1).to(self.text_encoder.dtype)
        t5 = self._t5(prompts)
        # Zero-pad (the pipeline's F.pad, which would crop a wider CLIP) to T5's width, then T5 after CLIP.
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        embeds = torch.cat([clip.to(t5.dtype), t5], dim=-2)
        pooled = torch.cat([pooled_l, pooled_g], dim=-1)
        return embeds.to(device=self.device, dtype=self.dtype), pooled.to(device=self.device, dtype=self.dtype)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode prompts as ``StableDiffusion3Pipeline.encode_prompt``; the empty prompt once per model."""
        if self._uncond is None:
            self._uncond = self._embed([""])
        embeds, pooled = self._embed(prompts)
        uncond, uncond_pooled = self._uncond
        return Conditioning(embeds, uncond, list(prompts), pooled=pooled, uncond_pooled=uncond_pooled)

    # -- the denoiser ------------------------------------------------------------------
    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance=1.0) -> torch.Tensor:
        """The velocity [B, C, h, w] at ``x`` and scheduler timestep ``t`` (σ·1000; 0-d, or [B], one per
        sample), CFG as the pipeline."""
        transformer = self.transformer
        x = x.to(self.dtype)
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if uses_cfg(guidance):
            embeds = torch.cat([cond.uncond.expand(batch, -1, -1), cond.cond])
            pooled = torch.cat([cond.uncond_pooled.expand(batch, -1), cond.pooled])
            x = torch.cat([x, x])
            t = torch.cat([t, t]) if t.ndim else t  # per-sample timesteps, both halves
        else:
            embeds, pooled = cond.cond, cond.pooled
        out = transformer(
            hidden_states=x,
            timestep=t.expand(x.shape[0]),
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        if uses_cfg(guidance):
            out_u, out_c = upcast(out).chunk(2)
            return guided(out_u, out_c, guidance)
        return upcast(out)

    def timestep_kwargs(self, num_steps: int) -> dict:
        """``mu`` from the image's token count when the scheduler shifts dynamically (SD3 and SD3.5 do not)."""
        if not self.scheduler_config.get("use_dynamic_shifting"):
            return {}
        from diffusers import FlowMatchEulerDiscreteScheduler

        config = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config).config
        _, h, w = self.sample_shape
        patch = self.transformer.config.patch_size
        return {"mu": flow_shift_mu((h // patch) * (w // patch), config)}

    # -- files -------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write a diffusers folder ``StableDiffusion3Pipeline.from_pretrained`` loads. Absent components are
        null in model_index.json; diffusers then wants them named, e.g. ``text_encoder_3=None, tokenizer_3=None``."""
        import diffusers
        from diffusers import FlowMatchEulerDiscreteScheduler

        folder = Path(folder)
        index: dict[str, Any] = {"_class_name": self.pipeline_classes[0], "_diffusers_version": diffusers.__version__}
        for key in COMPONENTS:
            part = getattr(self, key)
            if part is None:
                index[key] = [None, None]
                continue
            part.save_pretrained(folder / key)
            library = "diffusers" if type(part).__module__.startswith("diffusers") else "transformers"
            index[key] = [library, type(part).__name__]
        FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config).save_pretrained(folder / "scheduler")
        index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
        index["image_encoder"] = index["feature_extractor"] = [None, None]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, source: str, dtype: torch.dtype, **kw) -> SD3Model:
        """Components from a diffusers folder or hub id, each of the class its model_index.json names
        (``kw``: ``revision``)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        from draft_core.models.folder_index import component_class

        index = StableDiffusion3Pipeline.load_config(source, **kw)
        parts: dict[str, Any] = {}
        for key in COMPONENTS:
            part_class = component_class(source, key, index.get(key))  # diffusers' and transformers' classes only
            if part_class is None:
                parts[key] = None
                continue
            if issubclass(part_class, torch.nn.Module):
                dtype_kw = {"torch_dtype": dtype} if part_class.__module__.startswith("diffusers") else {"dtype": dtype}
                parts[key] = part_class.from_pretrained(source, subfolder=key, **dtype_kw, **kw)
            else:
                parts[key] = part_class.from_pretrained(source, subfolder=key, **kw)
        missing = [
            k for k in ("transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2") if parts[k] is None
        ]
        if missing:
            raise ValueError(f"the StableDiffusion3Pipeline folder has no {', '.join(missing)}")
        scheduler_config = dict(FlowMatchEulerDiscreteScheduler.load_config(source, subfolder="scheduler", **kw))
        return cls(scheduler_config=scheduler_config, name=source, **parts)

    def pipeline(self):
        """The family's diffusers pipeline on these components; NotImplementedError for a pixel-space model
        (no VAE), which no diffusers pipeline runs."""
        if self.vae is None:
            raise NotImplementedError(
                f"{self.name or 'this model'} is a pixel-space model (no VAE): no diffusers pipeline runs it"
            )
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(
            transformer=self.transformer,
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config),
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            text_encoder_3=self.text_encoder_3,
            tokenizer_3=self.tokenizer_3,
        )
