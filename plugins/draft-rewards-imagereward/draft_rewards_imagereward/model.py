"""ImageReward's network on transformers' BLIP classes, and the conversion of its checkpoint.

ImageReward (THUDM/ImageReward, ``ImageReward.pt``) is BLIP's ViT-L/16 image encoder, BLIP's
BERT-base text encoder with cross-attention to the image tokens ("med"), and an MLP head on the
[CLS] output. transformers ports both BLIP encoders (``BlipVisionModel``, ``BlipTextModel``); the
text encoder's parameter names are the original's, the vision encoder's are renamed here
(``convert_state_dict``). ``ARCH`` is the released model's configuration (med_config.json).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

#: ImageReward-v1.0: BLIP ViT-L/16 at 224 (eps 1e-6) and BERT-base with cross-attention to 1024-d image tokens.
ARCH: dict[str, dict[str, Any]] = {
    "vision": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=16,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
    ),
    "text": dict(
        vocab_size=30524,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=512,
        encoder_hidden_size=1024,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        pad_token_id=0,
    ),
}
#: the reward's standardisation, from ImageReward.py (its scores over the training set's images).
MEAN, STD = 0.16717362830052426, 1.0333394966054072
MAX_TOKENS = 35


def mlp_head(width: int) -> nn.Sequential:
    """The MLP, with the indices of its state dict (``layers.{0,2,4,6,7}``); no activations, so affine in eval."""
    return nn.Sequential(
        nn.Linear(width, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


class ImageRewardNet(nn.Module):
    """vision: BlipVisionModel; text: BlipTextModel (no pooler); head: the MLP."""

    def __init__(self, arch: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        from transformers import BlipTextConfig, BlipVisionConfig
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.vision = BlipVisionModel(BlipVisionConfig(**arch["vision"]))
        text = dict(arch["text"])
        # BlipTextConfig's bos/sep defaults are bert-base ids; keep them inside a small vocabulary
        text.setdefault("bos_token_id", None)
        text.setdefault("sep_token_id", None)
        self.text = BlipTextModel(BlipTextConfig(**text), add_pooling_layer=False)
        self.head = mlp_head(self.text.config.hidden_size)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] (normalised), tokens [B, L] -> standardised reward [B]."""
        image = self.vision(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        return (self.head(text[:, 0]).squeeze(-1) - MEAN) / STD


_VISION_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]


def convert_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ImageReward.pt's names (``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.layers.*``) to
    ``ImageRewardNet``'s. What the reward does not use (BLIP's projections, position-id buffers) is dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in original.items():
        if key.startswith("blip.visual_encoder."):
            name = key.removeprefix("blip.visual_encoder.")
            for pattern, repl in _VISION_RENAMES:
                name, hits = re.subn(pattern, repl, name)
                if hits:
                    break
            out["vision." + name] = value
        elif key.startswith("blip.text_encoder.") and not key.endswith("position_ids"):
            out["text." + key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("mlp.layers."):
            out["head." + key.removeprefix("mlp.layers.")] = value
    return out
