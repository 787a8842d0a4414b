"""ModelFamily: what every model family (sd, sdxl, sd3, flux, a plugin's) gives the samplers and estimators.

Samplers, estimators, rewards' wrappers, baselines and the CLI never touch a family's components
by name: they call ``encode_prompts`` once per batch, ``denoise(x, t, cond, guidance)`` per step
(classifier-free or distilled guidance applied inside), ``decode`` for images in [0, 1], and put
the LoRA on ``denoiser``. A family is registered by name through the ``register_models`` hook
(``register("sdxl", SDXLModel)``) and chosen from a diffusers folder's ``model_index.json``
(``pipeline_classes``) or by ``model.family``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers.utils.torch_utils import randn_tensor

from draft_core.models.conditioning import Conditioning
from draft_core.models.tensors import first_tensor, guided, parameter_dtype, token_ids, upcast, uses_cfg  # noqa: F401 (importable from here, as the families do)


class ModelFamily:
    """Frozen text-to-image components plus the scheduler config they were trained with.

    Subclasses set the class attributes and implement ``encode_prompts``, ``denoise``,
    ``sample_shape``, ``component_names`` and ``save_pretrained``; ``decode`` here handles a VAE
    (scaling and shift factors) or pixel space (no VAE).
    """

    #: the family's registered name ("sd", "sdxl", ...).
    family: ClassVar[str] = ""
    #: model_index.json ``_class_name`` values this family loads (the first is what it writes).
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    #: the diffusers pipeline class whose ``save_lora_weights``/``lora_state_dict`` its LoRA files follow; ""
    #: (or a class without a LoRA loader): diffusers' layout, written and read by the core (draft_core.lora.layout).
    lora_pipeline: ClassVar[str] = ""
    #: the attribute holding the denoiser, which is also the LoRA file's key prefix ("unet", "transformer").
    denoiser_name: ClassVar[str] = "unet"
    #: True for a guidance-distilled model (the guidance scale is an input; no unconditional pass).
    guidance_distilled: ClassVar[bool] = False
    #: True when ``denoise`` takes a 1-d ``t`` (one timestep per sample): samplers may then batch several steps.
    per_sample_timesteps: ClassVar[bool] = False
    #: "ddim" for noise-prediction families, "euler" for flow matching.
    default_sampler: ClassVar[str] = "ddim"
    #: the sampling steps and guidance scale a model of this family is sampled with unless given.
    default_steps: ClassVar[int] = 50
    default_guidance: ClassVar[float] = 7.5
    #: True for a family trained with flow matching (its samplers must be flow samplers).
    flow_matching: ClassVar[bool] = False
    #: named LoRA target sets (peft module-name suffixes): every family has "attention+ff";
    #: ``default_lora_targets`` names the default ("default" in a config).
    lora_target_sets: ClassVar[dict[str, tuple[str, ...]]] = {}
    default_lora_targets: ClassVar[str] = ""
    #: kohya key prefix per LoRA component (``lora_unet_<module path with underscores>``), for
    #: ``draft lora export``; a family whose kohya names are not its module paths overrides ``kohya_name``.
    kohya_prefixes: ClassVar[dict[str, str]] = {
        "unet": "lora_unet",
        "text_encoder": "lora_te",
        "text_encoder_2": "lora_te2",
    }

    def __init__(self, components: dict[str, Any], scheduler_config: dict, name: str = "") -> None:
        for key, value in components.items():
            setattr(self, key, value)
        self._component_keys = list(components)
        self.scheduler_config = dict(scheduler_config)
        self.name = name
        self._uncond: Any = None
        # True / False / "auto" (train.checkpoint_decode): see draft_core.memory.
        self.checkpoint_decode: bool | str = "auto"
        for module in self.modules():
            module.requires_grad_(False)
            module.eval()

    @classmethod
    def is_guidance_distilled(cls, name: str, revision: str | None = None) -> bool:
        """Whether model ``name`` of this family is guidance-distilled, known before any weights load
        (a family where it depends on the checkpoint, like flux, reads the denoiser's config)."""
        return bool(cls.guidance_distilled)

    @classmethod
    def sampling_defaults(cls, name: str, revision: str | None = None) -> dict[str, Any]:
        """{name, steps, guidance_scale}: how model ``name`` is sampled unless the config says otherwise
        (``draft_core.config.resolve`` fills them in); a family where it depends on the checkpoint overrides."""
        return {"name": cls.default_sampler, "steps": cls.default_steps, "guidance_scale": cls.default_guidance}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r}, name={self.name!r})"

    # -- components --------------------------------------------------------------------
    def modules(self) -> list[torch.nn.Module]:
        """The torch modules among the components (denoiser first)."""
        keys = [self.denoiser_name] + [k for k in self._component_keys if k != self.denoiser_name]
        return [m for m in (getattr(self, k, None) for k in keys) if isinstance(m, torch.nn.Module)]

    def named_modules(self) -> dict[str, torch.nn.Module]:
        return {
            k: getattr(self, k) for k in self._component_keys if isinstance(getattr(self, k, None), torch.nn.Module)
        }

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network the LoRA trains (a UNet or a transformer)."""
        return getattr(self, self.denoiser_name)

    @property
    def device(self) -> torch.device:
        """The denoiser's device, read from its first parameter. (diffusers' ``ModelMixin.device``
        first walks every submodule looking for group-offloading hooks: some 10-20 ms on SD's
        UNet, and samplers ask once per step.)"""
        return first_tensor(self.denoiser).device

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's compute dtype: its first floating parameter's, as diffusers' ``ModelMixin.dtype``
        finds it (skipping ``_keep_in_fp32_modules``) but without walking every submodule first."""
        return parameter_dtype(self.denoiser)

    @property
    def prediction_type(self) -> str:
        """ "epsilon", "v_prediction" or "flow" (the velocity ε − x0 of rectified flow)."""
        return self.scheduler_config.get("prediction_type") or "epsilon"

    @property
    def vae_scale_factor(self) -> int:
        vae = getattr(self, "vae", None)
        if vae is None:
            return 1
        return 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the space the sampler works in (latents, or pixels without a VAE)."""
        raise NotImplementedError

    @property
    def image_size(self) -> tuple[int, int]:
        _, h, w = self.sample_shape
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    #: the latent side must be a multiple of this (None: the UNet's downsampling, or the transformer's patch).
    latent_multiple: ClassVar[int | None] = None
    #: the largest image side ``model.resolution`` accepts, in pixels.
    max_resolution: ClassVar[int] = 4096

    def latent_size(self, native: tuple[int, int]) -> tuple[int, int]:
        """The latent (h, w) the sampler works at: ``model.resolution``'s when set, else ``native``."""
        return getattr(self, "_latent_size", None) or native

    def set_resolution(self, resolution: int | Sequence[int] | None) -> None:
        """Generate images of ``resolution`` ([height, width] pixels, or one side; None: the native
        size), checked against what the family supports; ConfigError otherwise."""
        from draft_core.errors import ConfigError

        if resolution is None:
            self._latent_size = None
            return
        hw = [resolution, resolution] if isinstance(resolution, int) else list(resolution)
        step = self.vae_scale_factor * self._latent_multiple()
        limit = self.max_resolution
        pos = getattr(self.denoiser.config, "pos_embed_max_size", None)  # SD3: a positional table of this many patches
        if pos:
            limit = min(limit, pos * self._latent_multiple() * self.vae_scale_factor)
        ok = len(hw) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and step <= v <= limit and v % step == 0 for v in hw
        )
        if not ok:
            raise ConfigError(
                f"model.resolution is {resolution!r}; the '{self.family or 'sd'}' family {self.name or ''} generates "
                f"images whose height and width are multiples of {step} px (the VAE's factor {self.vae_scale_factor} x "
                f"the denoiser's {self._latent_multiple()}) from {step} to {limit} px: give [height, width] or one side, "
                f"e.g. {self.image_size[0]} (native)."
            )
        self._latent_size = (hw[0] // self.vae_scale_factor, hw[1] // self.vae_scale_factor)

    def _latent_multiple(self) -> int:
        if self.latent_multiple is not None:
            return self.latent_multiple
        cfg = self.denoiser.config
        if getattr(cfg, "down_block_types", None):  # a UNet halves the latent at each down block but the last
            return 2 ** (len(cfg.down_block_types) - 1)
        return int(getattr(cfg, "patch_size", 1) or 1)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        for module in self.modules():
            # Only cast when needed: diffusers warns on every dtype cast.
            same = dtype is None or module.dtype == dtype
            module.to(device=device) if same else module.to(device=device, dtype=dtype)
        self._uncond = None
        return self

    def lora_targets(self, which: str | Sequence[str] | None = None) -> list[str]:
        """Module-name suffixes for ``lora.targets``: a named set, or a list given as is."""
        from draft_core.errors import ConfigError

        if which is None or which == "default":
            which = self.default_lora_targets
        if not isinstance(which, str):
            return list(which)
        if which not in self.lora_target_sets:
            raise ConfigError(
                f"lora.targets {which!r} is not a named set of the '{self.family}' family; use one of "
                f"{sorted(self.lora_target_sets)} or a list of module-name suffixes."
            )
        return list(self.lora_target_sets[which])

    # -- prompts and the denoiser ------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode prompts once (the empty prompt once per model), as the family's diffusers pipeline does."""
        raise NotImplementedError

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance=1.0) -> torch.Tensor:
        """The denoiser's output at sample ``x`` [B, C, h, w] and scheduler timestep ``t`` with guidance
        applied (``guided``; a distilled model takes ``guidance`` as an input), in at least float32."""
        raise NotImplementedError

    def timestep_kwargs(self, num_steps: int) -> dict:
        """Extra arguments for the scheduler's ``set_timesteps`` (a flow family's ``mu``, ``sigmas``).

        Samplers cache the schedule per model, device and number of steps, so what this returns must
        depend on nothing else that changes (the model's own configuration and image size are fixed)."""
        return {}

    # -- memory --------------------------------------------------------------------------
    def set_block_checkpointing(self, on: bool) -> bool:
        """Checkpoint the denoiser block by block (the UNet's down/mid/up blocks, a transformer's
        blocks) in its differentiable calls, with diffusers' own switch: only when grad mode is on,
        so no-grad sampling steps are untouched. False when the denoiser has no such switch."""
        net = self.denoiser
        if not getattr(net, "_supports_gradient_checkpointing", False):
            return False
        net.enable_gradient_checkpointing() if on else net.disable_gradient_checkpointing()
        return True

    # -- noise and images --------------------------------------------------------------
    def make_noise(self, batch: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        """Initial noise [B, C, h, w], drawn as diffusers' pipelines draw it."""
        return randn_tensor((batch, *self.sample_shape), generator=generator, device=self.device, dtype=dtype)

    def decode(self, sample: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] sample -> [B, 3, H, W] float32 images in [0, 1], differentiably.

        Where gradients flow, the VAE's activations are recomputed in the backward pass
        instead of kept, one image at a time (``checkpoint_decode``; draft_core.memory)."""
        import draft_core.memory as memory

        vae = getattr(self, "vae", None)
        matters = vae is not None and (
            self.checkpoint_decode is True or memory.pixels_matter(self.image_size, sample.shape[0])
        )
        if memory.wants(self.checkpoint_decode, matters) and memory.grad_flows(sample):
            decoder = getattr(vae, "decoder", None)
            if hasattr(decoder, "gradient_checkpointing"):  # diffusers' Decoder: block by block, one image at a time
                if getattr(decoder, "_gradient_checkpointing_func", None) is None:
                    vae.enable_gradient_checkpointing()  # sets the function diffusers checkpoints with
                decoder.gradient_checkpointing = True
                try:
                    return torch.cat([self._decode(sample[i : i + 1]) for i in range(sample.shape[0])])
                finally:
                    decoder.gradient_checkpointing = False
            # One region per image: the backward pass recomputes (and holds) one image's decoder at a time.
            return torch.cat([memory.run(self._decode, sample[i : i + 1]) for i in range(sample.shape[0])])
        return self._decode(sample)

    def _decode(self, sample: torch.Tensor) -> torch.Tensor:
        vae = getattr(self, "vae", None)
        if vae is not None:
            cfg = vae.config
            latents = sample.to(vae.dtype) / cfg.scaling_factor
            if getattr(cfg, "shift_factor", None):
                latents = latents + cfg.shift_factor
            sample = vae.decode(latents).sample
        images = (upcast(sample) / 2 + 0.5).clamp(0, 1)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return images

    # -- files -------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write a diffusers folder its family's pipeline class loads."""
        raise NotImplementedError

    def save_lora_weights(
        self, folder: str | Path, state: dict[str, torch.Tensor], metadata: dict | None = None
    ) -> Path:
        """Write the denoiser's LoRA (peft keys without prefix, its peft config as ``metadata``): ``save_lora_layers``."""
        return type(self).save_lora_layers(folder, {self.denoiser_name: state}, {self.denoiser_name: metadata})

    @classmethod
    def save_lora_layers(
        cls, folder: str | Path, layers: dict[str, dict[str, torch.Tensor]], metadata: dict[str, dict | None]
    ) -> Path:
        """Write ``folder/pytorch_lora_weights.safetensors`` from ``layers`` (component -> peft keys without
        prefix; ``metadata``: component -> peft config) as ``lora_pipeline``'s ``save_lora_weights`` writes it, or in
        diffusers' layout where that class has no LoRA loader. Training and ``draft lora mix`` both write through it."""
        from draft_core.lora.layout import save_family_layers

        return save_family_layers(cls, folder, layers, metadata)

    @classmethod
    def lora_components(cls) -> tuple[str, ...]:
        """The components a LoRA file of this family holds: those ``lora_pipeline``'s ``save_lora_weights``
        takes (``unet``, ``text_encoder``, ...), or the denoiser alone where that class has no LoRA loader."""
        from draft_core.lora.layout import family_components

        return family_components(cls)

    @classmethod
    def kohya_name(cls, component: str, module: str) -> str:
        """The kohya name (AUTOMATIC1111, ComfyUI, sd-scripts) of LoRA module ``module`` of ``component``:
        ``("unet", "down_blocks.0.attentions.0.proj_in")`` -> ``lora_unet_down_blocks_0_attentions_0_proj_in``."""
        from draft_core.errors import DraftError

        if component not in cls.kohya_prefixes:
            raise DraftError(
                f"cannot export LoRA module '{component}.{module}' to kohya: unknown component '{component}' of the "
                f"'{cls.family or 'sd'}' family (known: {sorted(cls.kohya_prefixes)})."
            )
        if component.startswith("text_encoder") and module.startswith(
            ("encoder.layers.", "embeddings.", "final_layer_norm")
        ):
            # kohya names follow CLIP's module tree rooted at text_model, which transformers 5's CLIPTextModel drops.
            module = f"text_model.{module}"
        return f"{cls.kohya_prefixes[component]}_{module.replace('.', '_')}"

    def pipeline(self):
        """The family's own diffusers pipeline built on these components (parity tests, export)."""
        raise NotImplementedError

    # -- planning (hook) --------------------------------------------------------------------------------
    @classmethod
    def meta_model(cls, source: str, dtype: torch.dtype) -> ModelFamily:
        """For ``draft plan``: this family's model ``source`` (a folder or a cached hub id) built from its
        components' configs alone, on the meta device in ``dtype`` (shapes, no weights). The built-in
        families are planned by the core; a plugin family that overrides this is planned like them."""
        from draft_core.errors import DraftError

        raise DraftError(
            f"draft plan cannot build model '{source}' without weights: its family '{cls.family}' "
            f"({cls.__module__}.{cls.__qualname__}) does not implement the planning hook meta_model(source, dtype)."
        )

    @classmethod
    def plans_itself(cls) -> bool:
        """Whether the family overrides ``meta_model`` (``draft plan`` then builds the model through it)."""
        return cls._overrides("meta_model")

    # -- LoRA files (hooks: a family whose diffusers pipeline has no LoRA loader overrides them) ---------
    @classmethod
    def lora_file_problem(cls) -> str:
        """Why this family could not write or read its LoRA files ("" when it can). Checked before a run
        starts, so a run never trains to the end and then fails to save. The provided hooks use
        ``lora_pipeline``'s loader, or diffusers' layout without one (``lora_pipeline`` empty, or a class
        without a LoRA loader); what they cannot use is a ``lora_pipeline`` diffusers does not have."""
        if (
            not cls.lora_pipeline
            or (cls._overrides("save_lora_layers") or cls._overrides("save_lora_weights"))
            and cls._overrides("lora_state_dict")
        ):
            return ""
        import diffusers

        if hasattr(diffusers, cls.lora_pipeline):
            return ""
        return (
            f"model family '{cls.family}' ({cls.__module__}.{cls.__qualname__}) has lora_pipeline "
            f"{cls.lora_pipeline!r}, which is not a diffusers class, so its LoRA files could be neither written nor "
            f"read. Name the diffusers pipeline class whose LoRA files the family's follow, or leave lora_pipeline "
            f"empty for diffusers' layout without a pipeline loader."
        )

    @classmethod
    def _overrides(cls, name: str) -> bool:
        mine, base = getattr(cls, name), getattr(ModelFamily, name)
        return getattr(mine, "__func__", mine) is not getattr(base, "__func__", base)

    @classmethod
    def lora_state_dict(cls, source: str | dict, **kwargs: Any) -> tuple[dict, dict | None, dict | None]:
        """Read a LoRA file (a folder plus ``weight_name``, or a state dict) into (state with the
        ``<denoiser_name>.`` key prefix, per-module alphas or None, adapter metadata or None), converting
        other layouts (kohya) where ``lora_pipeline``'s loader does; diffusers' layout without one."""
        from draft_core.lora.layout import pipeline_loader, read_lora_layers

        loader = pipeline_loader(cls, "lora_state_dict")
        if loader is None:
            return read_lora_layers(source, **kwargs)
        out = loader(source, return_lora_metadata=True, **kwargs)
        state, alphas, metadata = (out[0], None, out[-1]) if len(out) == 2 else out  # transformer pipelines: no alphas
        return dict(state), alphas or None, metadata or None

    @classmethod
    def lora_usage(cls, base: str, folder: str) -> str | None:
        """Python lines that load a LoRA of this family in diffusers, for the model card; None when no
        diffusers pipeline loads it (the card then gives only ``draft sample``)."""
        import diffusers

        loader = cls.pipeline_classes[0] if cls.pipeline_classes else ""
        if not callable(getattr(getattr(diffusers, loader, None), "load_lora_weights", None)):
            return None
        return (
            f"from diffusers import {loader}\npipe = {loader}.from_pretrained({base!r})\n"
            f"pipe.load_lora_weights({folder!r})"
        )
