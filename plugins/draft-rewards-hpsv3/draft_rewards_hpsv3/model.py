"""HPSv3's network on transformers' Qwen2-VL classes, and the conversion of its checkpoint.

HPSv3 (MizzenAI/HPSv3, ``HPSv3.safetensors``) is Qwen2-VL-7B-Instruct fine-tuned with a reward
head: an MLP from the decoder's last hidden state at the added token ``<|Reward|>`` to two
numbers, the mean and the spread of the predicted preference; the score is the mean. The
language-model head is not used. The checkpoint was saved from transformers 4.45's
``Qwen2VLForConditionalGeneration`` subclass (``model.*`` decoder, ``visual.*`` vision tower,
``rm_head.*``), its embeddings resized to the tokenizer with ``<|Reward|>`` added; transformers 5's
layout (``model.language_model.*``, ``model.visual.*``) is read too.

Positions: HPSv3 calls the decoder with input embeddings and no position ids, so Qwen2-VL's
multimodal rotary positions (``get_rope_index``) are not used: every token, image tokens too,
takes its sequential index in all three rotary sections. ``HPSv3Net`` does the same.

Rotary frequencies: HPSv3 was trained and is run (its ``create_model_and_processor``) after
``model.to(torch.bfloat16)``, which on transformers 4.45 rounds the rotary inverse frequencies
(buffers) to bfloat16, and its vision tower then formed the angles as a bfloat16 outer product of
positions and frequencies. ``hpsv3_rotary`` gives the network those numbers in every dtype
(transformers 5 would compute float32 frequencies and angles).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Qwen2-VL-7B-Instruct's config.json (vocab_size is taken from the checkpoint's embeddings).
ARCH: dict[str, Any] = {
    "text_config": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=28,
        bos_token_id=151643,
        eos_token_id=151645,
    ),
    "vision_config": dict(
        depth=32,
        embed_dim=1280,
        hidden_size=3584,
        hidden_act="quick_gelu",
        mlp_ratio=4,
        num_heads=16,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    ),
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
}


def reward_head(width: int) -> nn.Sequential:
    """HPSv3's rm_head (the "ranknet" head of its 7B config), with its state dict's indices 0, 3, 5."""
    return nn.Sequential(
        nn.Linear(width, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, 2)
    )


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


def hpsv3_rotary(config) -> tuple[nn.Module, nn.Module]:
    """(decoder rotary, vision rotary) with HPSv3's bfloat16-rounded frequencies, computed on the current device."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding, Qwen2VLVisionRotaryEmbedding

    class VisionRotary(Qwen2VLVisionRotaryEmbedding):
        """Angles rounded to bfloat16 as transformers 4.45 formed them: torch.outer(positions, frequencies) in bfloat16."""

        def forward(self, x, position_ids):
            positions = position_ids[..., None].to(x.device, torch.bfloat16)  # on the CPU under draft plan
            freqs = positions * self.inv_freq.to(x.device, torch.bfloat16)
            cos, sin = freqs.float().cos() * self.attention_scaling, freqs.float().sin() * self.attention_scaling
            return self.recomposition_frequencies(cos), self.recomposition_frequencies(sin)

    text, vision = Qwen2VLRotaryEmbedding(config=config.text_config), VisionRotary(config.vision_config)
    for module in (text, vision):
        module.inv_freq, module.original_inv_freq = _bf16(module.inv_freq), _bf16(module.original_inv_freq)
    return text, vision


def qwen2vl_config(arch: dict[str, Any], vocab_size: int | None = None):
    from transformers import Qwen2VLConfig

    arch = dict(arch)
    if vocab_size is not None:
        arch["text_config"] = {**arch["text_config"], "vocab_size": vocab_size}
    return Qwen2VLConfig(**arch)


class HPSv3Net(nn.Module):
    """visual: Qwen2-VL's vision tower; language: its decoder (no LM head); head: the reward MLP."""

    def __init__(self, config) -> None:
        super().__init__()
        from transformers.models.qwen2_vl.modeling_qwen2_vl import (
            Qwen2VisionTransformerPretrainedModel,
            Qwen2VLTextModel,
        )

        self.config, self.image_token_id = config, config.image_token_id
        self.visual = Qwen2VisionTransformerPretrainedModel(config.vision_config)
        self.language = Qwen2VLTextModel(config.text_config)
        self.head = reward_head(config.text_config.hidden_size)
        self.use_hpsv3_rotary()

    def use_hpsv3_rotary(self) -> None:
        """Rotary modules with HPSv3's frequencies (module doc), on the device of the other weights."""
        device = self.head[0].weight.device
        with torch.device(device):
            self.language.rotary_emb, self.visual.rotary_pos_emb = hpsv3_rotary(self.config)

    def forward(
        self,
        pixel_values: torch.Tensor,
        grid_thw: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        reward_token_id: int,
    ) -> torch.Tensor:
        """pixel_values [N, C·t·p·p] (all images' patches), grid_thw [B, 3], tokens [B, L] -> mean score [B]."""
        image = self.visual(pixel_values, grid_thw=grid_thw).pooler_output  # [tokens of all images, D]
        embeds = self.language.embed_tokens(input_ids)
        slots = (input_ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(slots, image.to(embeds.dtype))
        b, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).view(1, 1, -1).expand(3, b, -1)
        hidden = self.language(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions
        ).last_hidden_state
        # [B, D] at each sequence's one <|Reward|> (checked by the caller); argmax, not a boolean mask,
        # so that the shape is known without values (draft plan traces this on the meta device)
        at = (input_ids == reward_token_id).int().argmax(dim=1)
        pooled = hidden[torch.arange(b, device=hidden.device), at]
        head_dtype = self.head[0].weight.dtype  # float32 under a half-precision tower, as HPSv3 keeps it
        return self.head(pooled.to(head_dtype))[:, 0]


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HPSv3.safetensors' names (transformers 4.45's, or 5's) to ``HPSv3Net``'s; the LM head is dropped."""
    out = {}
    for key, value in state.items():
        if key.endswith("inv_freq"):  # rotary frequencies are computed, not loaded
            continue
        if key.startswith(("visual.", "model.visual.")):
            out["visual." + key.split("visual.", 1)[1]] = value
        elif key.startswith("model."):
            out["language." + key.removeprefix("model.").removeprefix("language_model.")] = value
        elif key.startswith("rm_head."):
            out["head." + key.removeprefix("rm_head.")] = value
    return out
