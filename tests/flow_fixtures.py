"""A small flow-matching model for the flow samplers' and estimators' tests: the ``sd3`` family in pixel space.

``SD3Model`` with a one-block MMDiT on 3 x 8 x 8 pixels (patch 1), the two tiny CLIPs of
tiny-random-sd3, no T5 (the family feeds zeros) and no VAE, so a float64 finite-difference test
runs in seconds. ``tiny-random-sd3`` itself (VAE, T5, two blocks) is used for pipeline parity.
"""

from __future__ import annotations

import torch
from diffusers import SD3Transformer2DModel
from transformers import CLIPTextModelWithProjection

from draft_core.lora import add_lora
from draft_core.models.families.sd3 import SD3Model
from draft_core.models.tiny_sd3 import CLIP_WIDTHS, SD35_SCHEDULER_CONFIG, tiny_clip_config
from draft_core.models.tokenizer import offline_clip_tokenizer

#: the SD3.5 scheduler (shift 3): sigmas that differ from a plain linear schedule.
FLOW_SCHEDULER = dict(SD35_SCHEDULER_CONFIG)


def tiny_pixel_flow(dtype=torch.float32, seed: int = 0, scheduler_config: dict | None = None) -> SD3Model:
    """An sd3-family model on 3 x 8 x 8 pixels (images in [-1, 1] are the samples themselves)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=8,
            patch_size=1,
            in_channels=3,
            out_channels=3,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=sum(CLIP_WIDTHS),
            pos_embed_max_size=8,
        )
        text_encoder = CLIPTextModelWithProjection(tiny_clip_config(CLIP_WIDTHS[0]))
        text_encoder_2 = CLIPTextModelWithProjection(tiny_clip_config(CLIP_WIDTHS[1]))
    tokenizer = offline_clip_tokenizer()
    model = SD3Model(
        transformer=transformer,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler_config=scheduler_config or FLOW_SCHEDULER,
        name="tiny-pixel-flow",
        max_sequence_length=8,
    )
    return model.to(dtype=dtype)


def flow_with_lora(dtype=torch.float32, seed: int = 0, rank: int = 2, scheduler_config: dict | None = None):
    """``tiny_pixel_flow`` with a LoRA on every attention and feed-forward layer, both factors random."""
    model = tiny_pixel_flow(dtype, seed, scheduler_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        params = add_lora(model, rank=rank, targets="attention+ff", init=False)
    for p in params:
        p.data = p.data.to(dtype)
    return model, params
