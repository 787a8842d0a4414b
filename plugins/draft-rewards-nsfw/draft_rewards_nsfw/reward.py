"""Safety reward from Stable Diffusion's safety checker (DRaFT paper, Appendix B.11).

diffusers' ``StableDiffusionSafetyChecker`` flags an image when the CLIP ViT-L/14 image
embedding e is close to any of 17 concept embeddings c_k. Its forward is ``no_grad`` and
goes through numpy; this module recomputes the same scores with torch ops:

    special_j = cos(e, s_j) − w_j                      (3 "special care" concepts)
    a         = 0.01 if any special_j > 0 else 0       (the checker's adjustment)
    concept_k = cos(e, c_k) − w_k + a                  (17 concepts)
    margin    = max_k concept_k                        (the image is NSFW iff margin > 0)

and the reward is ``r = −margin``: it rises as the image moves away from the nearest
concept, past the checker's threshold. (The checker rounds scores to 3 decimals before
comparing with 0; the reward does not round, which would kill its gradient.) The
adjustment is a step, so it has no gradient, as in the checker.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from draft_core.errors import ModelLoadError
from draft_core.rewarding.preprocess import CLIP_224
from draft_core.rewarding.pretrained import (
    check_dtype_option,
    check_pretrained_available,
    check_reward_images,
    compute_dtype,
    frozen_model,
    hub_load_error,
)

DEFAULT_MODEL = "CompVis/stable-diffusion-safety-checker"
ADJUSTMENT = 0.01
_FILES = "the safety checker's config.json and weights (or a pipeline folder with safety_checker/)"


class NSFWReward(nn.Module):
    """Reward [B] = −(NSFW margin) of the Stable Diffusion safety checker.

    model: a hub id holding the checker (``CompVis/stable-diffusion-safety-checker``; a
    pipeline id such as ``CompVis/stable-diffusion-v1-4`` with ``subfolder:
    safety_checker``). path: a local folder with the same files, or a pipeline folder
    (its ``safety_checker/`` is used); used instead of the hub. dtype: the network's dtype
    (``auto``: bfloat16 on CUDA, float32 on CPU). Prompts are ignored.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        path: str | None = None,
        subfolder: str | None = None,
        dtype: str = "auto",
    ) -> None:
        super().__init__()
        self.model_id, self.path, self.subfolder = model, path, subfolder
        self.dtype = check_dtype_option(dtype, "nsfw")

    @property
    def source(self) -> str:
        return str(Path(self.path).expanduser()) if self.path is not None else self.model_id

    def check_available(self) -> None:
        """The checker can be found (``path``, or the hub cache; online, the hub is asked later). Loads nothing."""
        check_pretrained_available("nsfw", self.model_id, self.path, files=_FILES, subfolder=self.subfolder)

    def _subfolder(self) -> str | None:
        """The checker's subfolder: as given, or ``safety_checker`` of a local pipeline folder."""
        if self.path is None:
            return self.subfolder
        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(
                f"nsfw: path '{self.path}' is not a folder. Give a folder holding {_FILES},"
                f" e.g. from `hf download {self.model_id} --local-dir DIR`."
            )
        if self.subfolder is None and (folder / "safety_checker").is_dir():
            return "safety_checker"
        return self.subfolder

    def load(self) -> nn.Module:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

        subfolder = self._subfolder()
        kwargs = {"subfolder": subfolder} if subfolder else {}
        try:
            return StableDiffusionSafetyChecker.from_pretrained(self.source, **kwargs)
        except (OSError, ValueError) as exc:
            raise hub_load_error("nsfw", self.source, exc, files=_FILES, hub_id=self.model_id) from exc

    def architecture(self) -> nn.Module:
        """The checker with random weights, reading no weights (``draft plan`` builds it on the meta
        device): the default checker is CLIP ViT-L/14's configuration; another source's config.json
        (a local folder, or the hub cache) is read."""
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPConfig

        from draft_rewards.clip_score import CLIP_L14, clip_config

        if self.path is None and self.model_id == DEFAULT_MODEL and not self.subfolder:
            config = clip_config(CLIP_L14, reward="nsfw")
        else:
            subfolder = self._subfolder()
            try:
                config = CLIPConfig.from_pretrained(self.source, **({"subfolder": subfolder} if subfolder else {}))
            except (OSError, ValueError) as exc:
                raise hub_load_error("nsfw", self.source, exc, files=_FILES, hub_id=self.model_id) from exc
        return StableDiffusionSafetyChecker(config)

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The checker's scores, differentiable: ``concept`` [B, 17] (adjustment included),
        ``special`` [B, 3], ``margin`` [B] and ``nsfw`` [B] (bool, margin > 0)."""
        from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance

        check_reward_images(images, "nsfw")
        dtype = compute_dtype(images, self.dtype)
        net = frozen_model(("nsfw", self.source, self.subfolder), self.load, images.device, dtype, owner=self)
        preprocess = CLIP_224.with_size(net.config.vision_config.image_size)
        pixels = preprocess(images if images.dtype == torch.float64 else images.float()).to(dtype)
        embeds = net.visual_projection(net.vision_model(pixels)[1])
        # the checker computes cosines in the network's dtype and compares in float32
        result_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        special = cosine_distance(embeds, net.special_care_embeds).to(result_dtype)
        special = special - net.special_care_embeds_weights.to(result_dtype)
        adjustment = ADJUSTMENT * (special > 0).any(dim=1, keepdim=True).to(result_dtype)
        concept = cosine_distance(embeds, net.concept_embeds).to(result_dtype)
        concept = concept - net.concept_embeds_weights.to(result_dtype) + adjustment
        margin = concept.max(dim=1).values
        return {"concept": concept, "special": special, "margin": margin, "nsfw": margin > 0}

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1], any size. Returns [B] = −margin."""
        return -self.scores(images)["margin"]

    def extra_repr(self) -> str:
        return f"model={self.source!r}" + (f", subfolder={self.subfolder!r}" if self.subfolder else "")
