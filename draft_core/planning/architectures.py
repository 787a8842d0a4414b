"""The configured model and reward with their weights on the meta device: architecture, no data.

Models: the embedded ones (``tiny-random``, ``digits``: small enough to build for real, then
moved to meta), a local diffusers folder (each component's own ``config.json``), a hub id
whose configs are in the Hugging Face cache, and by name from their published configurations
(no download needed): Stable Diffusion 1.x, and SDXL, SD3.5-medium and FLUX.1-dev
(``published.PUBLISHED``) as their families' classes.

Rewards load their network on first use. A reward that reads a checkpoint offers
``architecture()``: the same network with random weights, built without any file (the
built-in ``hpsv2``, ``pickscore``, ``clip-score`` and ``aesthetic`` do). The plan builds that
on the meta device in place of ``load()``; rewards without weights, or with weights shipped in
the package (``digit-classifier``), run as they are.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from draft_core.errors import DraftError
from draft_core.models.pipeline import DiffusionModel
from draft_core.models.tokenizer import offline_clip_tokenizer

META = torch.device("meta")

# SD 1.x share one architecture (REFERENCE: CompVis/stable-diffusion-v1-4's unet/, vae/ and
# text_encoder/ config.json); 1.5 is a continued training of 1.4.
SD1_NAMES = (
    "CompVis/stable-diffusion-v1-1",
    "CompVis/stable-diffusion-v1-2",
    "CompVis/stable-diffusion-v1-3",
    "CompVis/stable-diffusion-v1-4",
    "runwayml/stable-diffusion-v1-5",
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
)


class PlanError(DraftError):
    """The plan cannot be made (an architecture it cannot build, a budget no change meets)."""


def sd14_unet_config() -> dict:
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        mid_block_type="UNetMidBlock2DCrossAttn",
        attention_head_dim=8,
        cross_attention_dim=768,
        norm_num_groups=32,
        norm_eps=1e-5,
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
        use_linear_projection=False,
    )


def sd14_vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        norm_num_groups=32,
        act_fn="silu",
        scaling_factor=0.18215,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )


def sd14_text_config():
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


def build_sd14(device: torch.device | str = META, dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """SD 1.4's components from their published configs, random weights (none on ``meta``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from draft_core.models.tiny import SD14_SCHEDULER_CONFIG

    with torch.device(device):
        unet = UNet2DConditionModel(**sd14_unet_config()).to(dtype)
        vae = AutoencoderKL(**sd14_vae_config()).to(dtype)
        text = CLIPTextModel(sd14_text_config()).to(dtype)
    return DiffusionModel(
        unet, text, offline_clip_tokenizer(), SD14_SCHEDULER_CONFIG, vae=vae, name="stable-diffusion-v1-4"
    )


def meta_model(name: str, dtype: torch.dtype) -> DiffusionModel:
    """The model ``name`` (as ``model.name`` takes it) on the meta device in ``dtype``."""
    from draft_core.models.loading import EMBEDDED

    if name in EMBEDDED:
        return _to_meta_keeping_ties(EMBEDDED[name](), dtype)
    if name in SD1_NAMES:
        return build_sd14(META, dtype)
    from draft_core.planning.published import PUBLISHED

    if name in PUBLISHED:
        return published_model(name, META, dtype)
    family = _family_of(name)
    if family is not None and family.plans_itself():  # a plugin family's planning hook
        local = Path(name).expanduser()
        return family.meta_model(str(local) if local.exists() else name, dtype)
    return _from_configs(name, dtype)


def _family_of(name: str):
    """The registered family of a folder or cached hub id, or None where it cannot be told (the
    Stable Diffusion reading below then reports what is missing)."""
    from draft_core.errors import DraftError
    from draft_core.models.loading import check_model

    try:
        return check_model(name)
    except DraftError:
        return None


def _to_meta_keeping_ties(model, dtype: torch.dtype):
    """``model.to(META, dtype)`` with tied parameters still tied: moving to the meta device makes a
    new tensor per module that holds a parameter, so T5's ``shared`` and ``encoder.embed_tokens``
    (one tensor in the real model) would be counted twice."""
    owners: dict[int, list[tuple[torch.nn.Module, str]]] = {}
    for component in model.modules():
        for module in component.modules():
            for pname, param in module._parameters.items():
                if param is not None:
                    owners.setdefault(id(param), []).append((module, pname))
    model.to(device=META, dtype=dtype)
    for places in owners.values():
        first = places[0][0]._parameters[places[0][1]]
        for module, pname in places[1:]:
            module._parameters[pname] = first
    return model


def published_model(name: str, device: torch.device | str = META, dtype: torch.dtype = torch.float32):
    """A model of ``published.PUBLISHED`` as its family's class, built from its published configs: on the
    meta device (shapes only) or with random weights made directly in ``dtype`` on ``device`` (a
    12B transformer is never held in float32). Tokenizers: the offline CLIP one, which also stands in
    for T5's (its ids folded into T5's vocabulary: random weights make any id as good as another)."""
    from draft_core.models.loading import family_of_pipeline
    from draft_core.planning.published import PUBLISHED, components

    spec = PUBLISHED[name]
    family = family_of_pipeline(spec.pipeline, name)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else previous)
    try:
        with torch.device(device):
            parts = components(spec.family)
    finally:
        torch.set_default_dtype(previous)
    scheduler_config = parts.pop("scheduler_config")
    parts = {k: m if m.dtype == dtype else m.to(dtype) for k, m in parts.items()}  # diffusers warns on any cast
    for key, encoder in list(parts.items()):
        if key.startswith("text_encoder"):
            suffix = key.removeprefix("text_encoder")
            t5 = type(encoder).__name__ == "T5EncoderModel"
            parts[f"tokenizer{suffix}"] = (
                _t5_standin(encoder.config.vocab_size, 256 if spec.family == "sd3" else 512)
                if t5
                else offline_clip_tokenizer()
            )
    return construct(family, parts, scheduler_config, name)


def construct(family, parts: dict, scheduler_config: dict, name: str):
    """``family``'s instance from diffusers-named components: through ``ModelFamily.__init__``'s
    (components, scheduler_config, name) or a subclass's keyword arguments."""
    import inspect

    params = inspect.signature(family.__init__).parameters
    if "components" in params:
        return family(parts, scheduler_config, name=name)
    kwargs = {k: v for k, v in parts.items() if k in params}
    return family(**kwargs, scheduler_config=scheduler_config, name=name)


def _t5_standin(vocab_size: int, max_length: int):
    """The offline CLIP tokenizer in T5's place, its ids folded into ``vocab_size``."""
    tokenizer = offline_clip_tokenizer(max_length)
    call = type(tokenizer).__call__

    class Folded(type(tokenizer)):
        def __call__(self, *args, **kwargs):
            out = call(self, *args, **kwargs)
            ids = out["input_ids"]
            out["input_ids"] = ids % vocab_size if torch.is_tensor(ids) else [[i % vocab_size for i in r] for r in ids]
            return out

    tokenizer.__class__ = Folded
    return tokenizer


def _from_configs(name: str, dtype: torch.dtype) -> DiffusionModel:
    """A diffusers folder or a cached hub id: each component from its config.json alone."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    local = Path(name).expanduser()
    source = str(local) if local.exists() else name
    kw = {} if local.exists() else {"local_files_only": True}
    try:
        unet_config = UNet2DConditionModel.load_config(source, subfolder="unet", **kw)
        text_config = CLIPTextConfig.from_pretrained(source, subfolder="text_encoder", **kw)
        scheduler_config = dict(DDIMScheduler.load_config(source, subfolder="scheduler", **kw))
        has_vae = (local / "vae").is_dir() if local.exists() else True
        vae_config = AutoencoderKL.load_config(source, subfolder="vae", **kw) if has_vae else None
    except (OSError, ValueError) as exc:
        raise PlanError(
            f"draft plan cannot read the architecture of model '{name}': {str(exc).splitlines()[0] if str(exc) else exc}. "
            f"It builds models from their configs without weights: give a local diffusers folder (its config.json "
            f"files suffice), a hub id whose configs are in the Hugging Face cache, one of {', '.join(SD1_NAMES[3:5])} "
            f"(known without download), or an embedded model (tiny-random, digits)."
        ) from None
    with torch.device(META):
        unet = UNet2DConditionModel.from_config(unet_config).to(dtype)
        text = CLIPTextModel(text_config).to(dtype)
        vae = AutoencoderKL.from_config(vae_config).to(dtype) if vae_config is not None else None
    return DiffusionModel(unet, text, offline_clip_tokenizer(), scheduler_config, vae=vae, name=name)


# -- rewards ---------------------------------------------------------------------------------------


def reward_terms(reward) -> list:
    """The rewards a (possibly weighted) reward is made of."""
    terms = getattr(reward, "terms", None)
    return [r for r, _ in terms.values()] if isinstance(terms, dict) else [reward]


def use_architectures(reward, device: torch.device | str = META) -> None:
    """Make every term that offers ``architecture()`` build it on ``device`` (random weights, or
    none on the meta device) instead of loading its checkpoint."""
    for term in reward_terms(reward):
        arch = getattr(term, "architecture", None)
        if callable(arch) and hasattr(term, "load"):

            def load(arch=arch):
                logging.disable(logging.WARNING)  # "no pretrained weights loaded": none are wanted
                try:
                    with torch.device(device):
                        return arch()
                finally:
                    logging.disable(logging.NOTSET)

            load.random_weights = True  # frozen_model caches it apart from the real weights
            term.load = load


def module_tensors(obj) -> list[torch.Tensor]:
    """Parameters and buffers of ``obj`` and of its terms, where they are modules, and of the
    networks they hold through ``frozen_model`` (the plugin rewards' shared cache)."""
    from draft_core.rewarding.pretrained import networks_of

    out: dict[int, torch.Tensor] = {}  # by id: the reward itself is also its own only term
    for term in [obj, *reward_terms(obj)]:
        modules = [term] if isinstance(term, torch.nn.Module) else []
        for module in modules + networks_of(term):
            out.update((id(t), t) for t in (*module.parameters(), *module.buffers()))
    return list(out.values())
