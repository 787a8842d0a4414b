"""MPS, the Multi-dimensional Preference Score (Zhang et al. 2024, Kwai-Kolors/MPS), "overall" head.

A CLIP ViT-H-14 (transformers' ``CLIPModel``) whose image tokens attend to the prompt's tokens
through a condition-aware cross-attention tower (``draft_rewards_mps.cross``). The condition is a
fixed list of preference aspects ("light, color, clarity, ..."); prompt tokens that resemble none
of them are masked out:

    T = proj(text tokens) [77, D]      C = proj(condition tokens) [77, D]     t = proj(text EOS) [D]
    s_i = max_j ⟨T_i, C_j⟩ / max_i' max_j ⟨T_i', C_j⟩     mask_i = 0 if s_i > 0.01 else −inf
    v = Cross(proj(image tokens), T, mask)[CLS]
    r = exp(logit_scale) · cos(t, v)

MPS normalises s by its maximum over the whole batch, which makes one prompt's mask depend on the
others scored with it; here the maximum is taken per prompt, which is MPS's result for a batch of
one prompt (its inference script scores one prompt at a time) and keeps every image's reward its
own. Preprocessing: shortest side to 224 (bicubic), centre crop, CLIP mean/std (the
laion/CLIP-ViT-H-14 processor's), differentiably. Prompts: CLIP's BPE tokenizer (open_clip's,
which ships its vocabulary), 77 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from draft_core.errors import ModelLoadError
from draft_core.rewarding.preprocess import CLIP_224
from draft_core.rewarding.pretrained import check_dtype_option, check_reward_images, compute_dtype, frozen_model
from draft_rewards.hub import load_state_dict_file, load_strict, local_path
from draft_rewards.pretrained import check_prompts
from draft_rewards_mps.cross import CrossModel

CHECKPOINT = "MPS_overall_checkpoint.pth"
SOURCE = "github.com/Kwai-Kolors/MPS (its README links the checkpoint)"
CONDITION = (
    "light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, structure,"
    " instance, texture, quantity, attributes, position, number, location, word, things."
)
#: CLIP ViT-H-14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K) and MPS's cross tower.
ARCH: dict[str, Any] = {
    "clip": dict(
        projection_dim=1024,
        text_config=dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, hidden_act="gelu"
        ),
        vision_config=dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            patch_size=14,
            image_size=224,
            hidden_act="gelu",
        ),
    ),
    "cross": dict(dim=1024, depth=4, dim_head=64, heads=16),
}


class MPSNet(nn.Module):
    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        from transformers import CLIPConfig, CLIPModel

        self.clip = CLIPModel(CLIPConfig(**arch["clip"]))
        self.cross = CrossModel(**arch["cross"])

    def text_tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projected tokens [B, L, D], projected EOS [B, D])."""
        out = self.clip.text_model(input_ids=ids)
        return self.clip.text_projection(out.last_hidden_state), self.clip.text_projection(out.pooler_output)

    def forward(
        self, pixels: torch.Tensor, text: torch.Tensor, eos: torch.Tensor, condition: torch.Tensor
    ) -> torch.Tensor:
        """pixels [B, 3, S, S]; text [B, L, D], eos [B, D], condition [L', D] (prompt-side, no gradient) -> [B]."""
        image = self.clip.visual_projection(self.clip.vision_model(pixel_values=pixels).last_hidden_state)
        similarity = (text @ condition.T).amax(dim=-1)  # [B, L]: each prompt token's closest aspect
        similarity = similarity / similarity.amax(dim=-1, keepdim=True)
        mask = torch.zeros_like(similarity).masked_fill(similarity <= 0.01, float("-inf"))
        mask = mask[:, None, :].expand(-1, image.shape[1], -1)
        fused = self.cross(image, text, mask)[:, 0]
        return self.clip.logit_scale.exp() * F.cosine_similarity(eos, fused, dim=-1)


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MPS's names (``model.*`` CLIP, ``cross_model.*``; imscore's copy adds ``mps.``) to MPSNet's."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("mps.")
        if key.endswith("position_ids"):
            continue
        if key.startswith("model."):
            out["clip." + key.removeprefix("model.")] = value
        elif key.startswith("cross_model."):
            out["cross." + key.removeprefix("cross_model.")] = value
    return out


class MPSReward(nn.Module):
    """MPS overall score [B] of images [B, 3, H, W] in [0, 1] for their prompts.

    path: the checkpoint (``MPS_overall_checkpoint.pth`` as a state dict, or a .safetensors copy;
    required: the weights have no hub id here). arch: the
    network's sizes (``ARCH``; tests give a tiny one). dtype: ``auto`` (bfloat16 on CUDA, float32
    on CPU), float32, bfloat16 or float16.
    """

    def __init__(self, path: str | None = None, arch: dict[str, Any] | None = None, dtype: str = "auto") -> None:
        super().__init__()
        if path is not None and not (isinstance(path, str) and path):
            raise ValueError(f"mps: path must be the path of the MPS checkpoint, got {path!r}.")
        if arch is not None and not (isinstance(arch, dict) and set(arch) == {"clip", "cross"}):
            raise ValueError(f"mps: arch must be a dict with 'clip' and 'cross' entries, got {arch!r}.")
        self.path, self.arch = path, arch or ARCH
        self.dtype = check_dtype_option(dtype, "mps")
        self._condition: dict[tuple, torch.Tensor] = {}

    def checkpoint_file(self) -> Path:
        if self.path is None:
            raise ModelLoadError(
                f"mps: no checkpoint given. MPS's weights ({CHECKPOINT}) are published through {SOURCE},"
                f" not under a Hugging Face id this reward knows: download the file on a machine with network"
                f" and give its path as `path:` (reward.path=/path/to/{CHECKPOINT}), as a state dict"
                " (torch.save(model.state_dict(), ...)) or .safetensors."
            )
        return local_path(
            self.path, reward="mps", option="path", expected=f"the MPS checkpoint ({CHECKPOINT}, a state dict)"
        )

    def check_available(self) -> None:
        """The checkpoint file exists. Loads nothing; the tokenizer ships with open_clip."""
        self.checkpoint_file()

    def load(self) -> nn.Module:
        path = self.checkpoint_file()
        state = convert_state_dict(load_state_dict_file(path, reward="mps", option="path"))
        net = MPSNet(self.arch)
        load_strict(net, state, reward="mps", path=path, expected="MPS (CLIP ViT-H-14 + cross-attention tower)")
        return net

    def architecture(self) -> nn.Module:
        """The network with random weights, reading no checkpoint (``draft plan`` builds it on the meta device)."""
        return MPSNet(self.arch)

    @staticmethod
    def tokenize(texts: Sequence[str], device: torch.device) -> torch.Tensor:
        import open_clip

        return open_clip.tokenize(list(texts)).to(device)  # CLIP BPE, 77 tokens, padded with 0 as laion's "!"

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1]; prompts: B strings. Returns [B] (float32; float64 for float64 images)."""
        check_reward_images(images, "mps")
        prompts = check_prompts(prompts, images.shape[0], "mps")
        dtype = compute_dtype(images, self.dtype)
        net = frozen_model(("mps", self.path, repr(self.arch)), self.load, images.device, dtype, owner=self)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        with torch.no_grad():  # the prompt side takes no gradient
            text, eos = net.text_tokens(self.tokenize(prompts, images.device))
            key = (images.device, dtype)
            if key not in self._condition:
                self._condition[key] = net.text_tokens(self.tokenize([CONDITION], images.device))[0][0]
        pixels = CLIP_224.with_size(net.clip.config.vision_config.image_size)(images.to(work)).to(dtype)
        return net(pixels, text, eos, self._condition[key]).to(work)

    def extra_repr(self) -> str:
        return f"path={self.path!r}"
