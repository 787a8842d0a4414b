"""The LAION aesthetic predictor: a small head on normalised CLIP ViT-L/14 image embeddings, scores about 1-10.

Score = head(e / |e|) with e = ``get_image_features`` of openai/clip-vit-large-patch14 (its
vision tower and projection only). The head is the "improved" predictor of
christophschuhmann/improved-aesthetic-predictor, ``sac+logos+ava1-l14-linearMSE.pth``:
Linear(768,1024), Dropout, Linear(1024,128), Dropout, Linear(128,64), Dropout, Linear(64,16),
Linear(16,1), no activations (state-dict keys ``layers.{0,2,4,6,7}.{weight,bias}``). The
older linear predictor ``sa_0_4_vit_l_14_linear.pth`` (keys ``weight``, ``bias``) loads too.

Without ``path`` the head comes from the hub copy ``trl-lib/ddpo-aesthetic-predictor``
(``aesthetic-model.pth``, the file TRL's DDPO example uses) in the Hugging Face cache.
Preprocessing is ``CLIP_224`` (CLIPImageProcessor: shortest edge 224 bicubic, centre crop),
differentiably; AlignProp and TRL resize the tensor bilinearly without a crop, which is the
same for square images up to the interpolation filter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from draft_core.errors import ModelLoadError
from draft_core.rewarding.preprocess import CLIP_224, ImagePreprocess
from draft_rewards.clip_score import CLIP_L14, clip_config
from draft_rewards.hub import (
    from_pretrained,
    hub_file,
    hub_file_available,
    load_state_dict_file,
    load_strict,
    local_path,
    pretrained_available,
)
from draft_rewards.pretrained import PretrainedReward

HEAD_REPO = "trl-lib/ddpo-aesthetic-predictor"
HEAD_FILE = "aesthetic-model.pth"
OFFICIAL_FILE = "sac+logos+ava1-l14-linearMSE.pth"
MLP_LINEAR_KEYS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")


class AestheticMLP(nn.Module):
    """The improved predictor's head, with its state-dict layout; affine in eval mode."""

    def __init__(self, embed_dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def head_from_state_dict(sd: dict, *, path, reward: str = "aesthetic") -> nn.Module:
    """The improved MLP or the old linear head, whichever layout ``sd`` has, with its weights."""
    mlp_keys = {f"{name}.{p}" for name in MLP_LINEAR_KEYS for p in ("weight", "bias")}
    if set(sd) == mlp_keys:
        head = AestheticMLP(sd["layers.0.weight"].shape[1])
    elif set(sd) == {"weight", "bias"}:
        head = nn.Linear(sd["weight"].shape[1], 1)
    else:
        shown = ", ".join(sorted(sd)[:6]) + (", ..." if len(sd) > 6 else "")
        raise ModelLoadError(
            f"{reward}: '{path}' is not an aesthetic predictor head. Expected the keys of {OFFICIAL_FILE} "
            f"(layers.{{0,2,4,6,7}}.{{weight,bias}}) or of the linear sa_0_4_vit_l_14_linear.pth (weight, bias); "
            f"found {shown or 'no keys'}."
        )
    load_strict(head, {k: v.float() for k, v in sd.items()}, reward=reward, path=path, expected="the predictor head")
    return head


class AestheticNet(nn.Module):
    """CLIP vision tower with projection, then the predictor head."""

    def __init__(self, vision: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.vision = vision
        self.head = head


class Aesthetic(PretrainedReward):
    """LAION aesthetic score of each image (prompts are ignored); about 1-10.

    path: the head's checkpoint file (``sac+logos+ava1-l14-linearMSE.pth`` or a copy); None
    takes ``aesthetic-model.pth`` of the hub model trl-lib/ddpo-aesthetic-predictor from the
    Hugging Face cache. clip_model: hub id or local folder of the CLIP model whose image
    embeddings the head reads (openai/clip-vit-large-patch14). dtype: as for every pretrained
    reward (``auto``: bfloat16 on CUDA, float32 on CPU).
    """

    reward_name = "aesthetic"
    uses_prompts = False

    def __init__(self, path: str | None = None, clip_model: str = CLIP_L14, dtype: str = "auto") -> None:
        super().__init__(dtype)
        for key, value in (("path", path), ("clip_model", clip_model)):
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"aesthetic: {key} must be a file path or hub id (a string), got {value!r}.")
        self.path = path
        self.clip_model = clip_model

    def head_file(self):
        if self.path is not None:
            return local_path(
                self.path, reward="aesthetic", option="path", expected=f"the predictor head ({OFFICIAL_FILE})"
            )
        return hub_file(HEAD_REPO, HEAD_FILE, reward="aesthetic", option="path")

    CLIP_EXPECTED = "a CLIP model folder written by CLIPModel.save_pretrained (config.json and weights)"

    def check_available(self) -> None:
        if self.path is not None:
            self.head_file()
        else:
            hub_file_available(HEAD_REPO, HEAD_FILE, reward="aesthetic", option="path")
        pretrained_available(self.clip_model, reward="aesthetic", option="clip_model", expected=self.CLIP_EXPECTED)

    def load(self) -> nn.Module:
        from transformers import CLIPConfig, CLIPVisionModelWithProjection

        path = self.head_file()  # first: a missing file fails before the large CLIP loads
        head = head_from_state_dict(load_state_dict_file(path, reward="aesthetic", option="path"), path=path)
        kw = dict(reward="aesthetic", option="clip_model", expected=self.CLIP_EXPECTED)
        config = from_pretrained(CLIPConfig.from_pretrained, self.clip_model, **kw)
        head_dim = next(head.parameters()).shape[1]
        if head_dim != config.projection_dim:
            raise ModelLoadError(
                f"aesthetic: the head in '{path}' reads {head_dim}-d "
                f"embeddings but the CLIP model '{self.clip_model}' makes {config.projection_dim}-d ones; the "
                f"predictor belongs with openai/clip-vit-large-patch14 (768)."
            )
        # The vision tower and its projection only: the text tower is a third of ViT-L/14's weights.
        vision_config = config.vision_config
        vision_config.projection_dim = config.projection_dim
        vision = from_pretrained(
            CLIPVisionModelWithProjection.from_pretrained,
            self.clip_model,
            config=vision_config,
            dtype=torch.float32,
            **kw,
        )
        return AestheticNet(vision, head)

    def architecture(self) -> nn.Module:
        """The vision tower and the improved head with random weights, reading no weights file (``draft plan``)."""
        from transformers import CLIPVisionModelWithProjection

        config = clip_config(self.clip_model, reward="aesthetic", option="clip_model")
        vision_config = config.vision_config
        vision_config.projection_dim = config.projection_dim
        return AestheticNet(CLIPVisionModelWithProjection(vision_config), AestheticMLP(config.projection_dim))

    def preprocessor(self, net: nn.Module) -> ImagePreprocess:
        return CLIP_224.with_size(net.vision.config.image_size)

    def score_pixels(self, net: nn.Module, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        model_dtype = next(net.head.parameters()).dtype
        features = net.vision(pixel_values=pixels.to(model_dtype)).image_embeds
        embeddings = F.normalize(features.to(pixels.dtype), dim=-1)
        return net.head(embeddings.to(model_dtype)).squeeze(-1).to(pixels.dtype)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, clip_model={self.clip_model!r}, " + super().extra_repr()
