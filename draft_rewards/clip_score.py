"""Image-prompt similarity under a transformers CLIP model: ``clip-score`` (paper B.10) and ``pickscore``.

Both embed the image with ``get_image_features`` and the prompt with ``get_text_features``,
L2-normalise each, and take the cosine. PickScore (Kirstain et al. 2023; hub model
``yuvalkirstain/PickScore_v1``, a CLIP ViT-H/14 fine-tune) multiplies it by the model's
``logit_scale.exp()``, as its README computes it (typical values 18-24). ``clip-score``
is the plain cosine (torchmetrics' CLIPScore is 100 * max(cos, 0)).

Images go through ``CLIP_224`` (transformers' CLIPImageProcessor: shortest edge 224,
bicubic, centre crop; the settings of both models' processors), differentiably. Prompts use
the CLIP BPE tokenizer that ships with open_clip (the same ids as both models' tokenizers),
truncated at the model's 77 positions.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from draft_core.rewarding.preprocess import CLIP_224, ImagePreprocess
from draft_rewards.hub import from_pretrained, pretrained_available
from draft_rewards.pretrained import PretrainedReward

CLIP_L14 = "openai/clip-vit-large-patch14"
PICKSCORE = "yuvalkirstain/PickScore_v1"


# The architectures of the default models (their config.json), so that ``architecture()`` needs no
# download: openai's ViT-L/14 and the LAION ViT-H/14 that PickScore fine-tunes.
KNOWN_CONFIGS = {
    CLIP_L14: dict(
        text_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            hidden_act="quick_gelu",
            projection_dim=768,
        ),
        vision_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            num_hidden_layers=24,
            patch_size=14,
            image_size=224,
            hidden_act="quick_gelu",
            projection_dim=768,
        ),
        projection_dim=768,
    ),
    PICKSCORE: dict(
        text_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            num_hidden_layers=24,
            hidden_act="gelu",
            projection_dim=1024,
        ),
        vision_config=dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_attention_heads=16,
            num_hidden_layers=32,
            patch_size=14,
            image_size=224,
            hidden_act="gelu",
            projection_dim=1024,
        ),
        projection_dim=1024,
    ),
}


def clip_config(model: str, *, reward: str, option: str = "model"):
    """The ``CLIPConfig`` of ``model``: a default model's from ``KNOWN_CONFIGS``, else its config.json
    (a local folder or the Hugging Face cache)."""
    from transformers import CLIPConfig

    if model in KNOWN_CONFIGS:
        return CLIPConfig(**KNOWN_CONFIGS[model])
    return from_pretrained(
        CLIPConfig.from_pretrained,
        model,
        reward=reward,
        option=option,
        expected="a CLIP model folder with its config.json",
    )


@lru_cache(maxsize=4)
def clip_tokenizer(max_length: int):
    from draft_core.models.tokenizer import offline_clip_tokenizer

    return offline_clip_tokenizer(max_length)


class ClipScore(PretrainedReward):
    """``r = cos(image embedding, prompt embedding)`` under CLIP ``model`` (a hub id or a local folder).

    model: any transformers ``CLIPModel`` (default openai/clip-vit-large-patch14).
    dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16.
    """

    reward_name = "clip-score"
    #: multiply the cosine by ``logit_scale.exp()`` (PickScore).
    use_logit_scale = False

    def __init__(self, model: str = CLIP_L14, dtype: str = "auto") -> None:
        super().__init__(dtype)
        if not isinstance(model, str) or not model:
            raise ValueError(f"{self.reward_name}: model must be a hub id or a local folder, got {model!r}.")
        self.model = model

    EXPECTED = "a folder written by CLIPModel.save_pretrained (config.json and weights)"

    def check_available(self) -> None:
        pretrained_available(self.model, reward=self.reward_name, option="model", expected=self.EXPECTED)

    def load(self) -> nn.Module:
        from transformers import CLIPModel

        return from_pretrained(
            CLIPModel.from_pretrained,
            self.model,
            reward=self.reward_name,
            option="model",
            expected=self.EXPECTED,
            dtype=torch.float32,
        )

    def architecture(self) -> nn.Module:
        """The CLIP model with random weights, reading no weights file (``draft plan``)."""
        from transformers import CLIPModel

        return CLIPModel(clip_config(self.model, reward=self.reward_name))

    def encode_prompts(self, net: nn.Module, prompts: list[str]) -> torch.Tensor:
        length = net.config.text_config.max_position_embeddings
        tokens = clip_tokenizer(length)(prompts, padding=True, truncation=True, max_length=length, return_tensors="pt")
        device = net.logit_scale.device
        features = net.get_text_features(
            input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
        ).pooler_output
        return F.normalize(features.to(self.work_dtype(net)), dim=-1)

    @staticmethod
    def work_dtype(net: nn.Module) -> torch.dtype:
        return torch.float64 if net.logit_scale.dtype == torch.float64 else torch.float32

    def preprocessor(self, net: nn.Module) -> ImagePreprocess:
        return CLIP_224.with_size(net.config.vision_config.image_size)

    def score_pixels(self, net: nn.Module, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        features = net.get_image_features(pixel_values=pixels.to(net.logit_scale.dtype)).pooler_output
        image = F.normalize(features.to(pixels.dtype), dim=-1)
        cosine = (image * self.prompt_features(net, prompts)).sum(dim=-1)
        if self.use_logit_scale:
            cosine = net.logit_scale.exp().to(cosine.dtype) * cosine
        return cosine

    def extra_repr(self) -> str:
        return f"model={self.model!r}, " + super().extra_repr()


class PickScore(ClipScore):
    """PickScore: ``r = logit_scale.exp() * cos(image, prompt)`` under ``yuvalkirstain/PickScore_v1``.

    model: the hub id or a local folder with that model (CLIPModel.save_pretrained layout).
    """

    reward_name = "pickscore"
    use_logit_scale = True

    def __init__(self, model: str = PICKSCORE, dtype: str = "auto") -> None:
        super().__init__(model, dtype)
