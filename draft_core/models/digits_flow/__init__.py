"""``digits-flow``: the project's small flow-matching text-to-image model, an SD3-style MMDiT on sklearn's digits.

A pixel-space diffusers ``SD3Transformer2DModel`` (32x32, 3 channels in [-1, 1], no VAE;
patch 2, width 96, 4 joint blocks, 1.31M parameters; ``train.py`` gives the recipe and its time)
trained with rectified flow, conditioned exactly as ``StableDiffusion3Pipeline.encode_prompt``
conditions it with ``text_encoder_3=None``: two small ``CLIPTextModelWithProjection``
(trained jointly from scratch, offline CLIP tokenizers with a 16-token context), their
penultimate hidden states concatenated on the feature axis and padded to
``joint_attention_dim``, then ``MAX_SEQUENCE_LENGTH`` zero rows where T5's tokens would be;
pooled = both projected text embeddings. Scheduler: ``FlowMatchEulerDiscreteScheduler``
(shift 1). ``python -m draft_core.models.digits_flow.train`` writes ``weights/``,
deterministically from its seed; ``build_digits_flow()`` reads them with no network, and
``build_digits_flow_model()`` wraps them as the ``sd3`` family's ``SD3Model`` (what
``load_model("digits-flow")`` returns; preset ``quickstart-flow`` fine-tunes it).

As for ``digits``, only the token-embedding rows of the tokens in the training prompts are
stored; every other row is rebuilt as zeros (those rows were never trained).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

WEIGHTS_DIR = Path(__file__).parent / "weights"

# Zero "T5" rows appended after the CLIP tokens (encode_prompt's max_sequence_length). The
# transformer was trained with exactly this many; its context embedder maps zero rows to its
# bias, so a different count changes the attention and the samples.
MAX_SEQUENCE_LENGTH = 8
# Sampling defaults the benchmarks measured (benchmarks/digits_quality.py and digits_variety.py --model
# digits-flow): at CFG 4 the SVC reads 200 of 200 and the samples of one prompt vary as `digits`' do
# (0.082 at 32 px); CFG 8 made them near-copies (0.064).
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.0

__all__ = [
    "WEIGHTS_DIR",
    "MAX_SEQUENCE_LENGTH",
    "DEFAULT_STEPS",
    "DEFAULT_GUIDANCE",
    "DigitsFlowComponents",
    "build_digits_flow",
    "build_digits_flow_model",
    "sd3_pipeline",
]


@dataclass
class DigitsFlowComponents:
    """The parts of ``digits-flow``, named as ``StableDiffusion3Pipeline`` names them (no VAE, no T5)."""

    transformer: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    text_encoder_2: torch.nn.Module
    tokenizer_2: object
    scheduler_config: dict
    meta: dict = field(default_factory=dict)  # model.json: image size, max_sequence_length, defaults

    @property
    def max_sequence_length(self) -> int:
        return int(self.meta.get("max_sequence_length", MAX_SEQUENCE_LENGTH))

    @property
    def image_size(self) -> int:
        return int(self.transformer.config.sample_size)


def sd3_pipeline(parts: DigitsFlowComponents):
    """A diffusers ``StableDiffusion3Pipeline`` around ``parts`` (vae=None: run it with ``output_type="latent"``
    and ``height = width = image_size * pipe.vae_scale_factor``; its "latents" are the pixels)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=parts.transformer,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(parts.scheduler_config),
        vae=None,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        text_encoder_2=parts.text_encoder_2,
        tokenizer_2=parts.tokenizer_2,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"digits-flow model file {path} is missing; train the weights with "
            f"`python -m draft_core.models.digits_flow.train --out {path.parent}`."
        )
    return json.loads(path.read_text())


def _load_text_encoder(folder: Path, stem: str):
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from draft_core.models.digits import _table_key, unpack_text_encoder_state

    config = CLIPTextConfig.from_dict(_read_json(folder / f"{stem}_config.json"))
    with torch.random.fork_rng(devices=[]):  # init draws from the global generator; all of it is overwritten
        encoder = CLIPTextModelWithProjection(config)
    packed = load_file(str(folder / f"{stem}.safetensors"))
    key = _table_key(encoder.state_dict())
    encoder.load_state_dict(unpack_text_encoder_state(packed, config.vocab_size, key))
    return encoder.float().eval().requires_grad_(False)


def build_digits_flow(weights_dir: str | Path = WEIGHTS_DIR) -> DigitsFlowComponents:
    """The ``digits-flow`` components (float32, CPU, frozen, eval) from ``weights_dir``."""
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import load_file

    from draft_core.models.tokenizer import offline_clip_tokenizer

    folder = Path(weights_dir)
    meta = _read_json(folder / "model.json")
    transformer_config = _read_json(folder / "transformer_config.json")
    scheduler_config = _read_json(folder / "scheduler_config.json")
    with torch.random.fork_rng(devices=[]):
        transformer = SD3Transformer2DModel.from_config(transformer_config)
    transformer.load_state_dict(load_file(str(folder / "transformer.safetensors")))
    length = meta["tokenizer_max_length"]
    return DigitsFlowComponents(
        transformer=transformer.float().eval().requires_grad_(False),
        text_encoder=_load_text_encoder(folder, "text_encoder"),
        tokenizer=offline_clip_tokenizer(model_max_length=length),
        text_encoder_2=_load_text_encoder(folder, "text_encoder_2"),
        tokenizer_2=offline_clip_tokenizer(model_max_length=length),
        scheduler_config=scheduler_config,
        meta=meta,
    )


def build_digits_flow_model(weights_dir: str | Path = WEIGHTS_DIR):
    """``digits-flow`` as an ``sd3``-family model (``SD3Model``: no VAE, no T5, float32, CPU, frozen)."""
    from draft_core.models.families.sd3 import SD3Model

    parts = build_digits_flow(weights_dir)
    return SD3Model(
        transformer=parts.transformer,
        text_encoder=parts.text_encoder,
        text_encoder_2=parts.text_encoder_2,
        tokenizer=parts.tokenizer,
        tokenizer_2=parts.tokenizer_2,
        scheduler_config=parts.scheduler_config,
        text_encoder_3=None,
        tokenizer_3=None,
        vae=None,
        name="digits-flow",
        max_sequence_length=parts.max_sequence_length,
    )
