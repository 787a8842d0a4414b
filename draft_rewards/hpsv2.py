"""Human Preference Score v2 (Wu et al. 2023): an open_clip ViT-H-14 fine-tuned on human preferences.

Score = cos(image features, prompt features), both L2-normalised, with no logit scale: the
diagonal of ``image_features @ text_features.T`` that ``hpsv2.score`` returns (about
0.2-0.35; SD 1.4 averages 0.2695 on the HPDv2 benchmark with v2.0, the paper's Table 2).
Checkpoints: hub model ``xswu/HPSv2``, ``HPS_v2_compressed.pt`` (v2.0, the paper's) or
``HPS_v2.1_compressed.pt`` (v2.1; scores of the two versions do not compare), loaded into
open_clip's ``ViT-H-14`` with ``load_state_dict(checkpoint['state_dict'])``.

Preprocessing mirrors HPSv2's ``preprocess_val``: longest side to 224 (bicubic), centre-pad
to 224 x 224 with black, CLIP mean/std (``OPEN_CLIP_LONGEST_224``), differentiably. Prompts
use open_clip's tokenizer for the architecture (77 tokens).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from draft_core.rewarding.preprocess import OPEN_CLIP_LONGEST_224, ImagePreprocess
from draft_rewards.hub import hub_file, hub_file_available, load_state_dict_file, load_strict, local_path
from draft_rewards.pretrained import PretrainedReward

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"2.0": "HPS_v2_compressed.pt", "2.1": "HPS_v2.1_compressed.pt"}
ARCH = "ViT-H-14"


def check_version(version: Any) -> str:
    """'2.0' or '2.1' from 2, 2.0, '2.0', 'v2', 2.1, '2.1', 'v2.1'; ValueError otherwise."""
    text = str(version).strip().lower().removeprefix("v")
    text = {"2": "2.0"}.get(text, text)
    if isinstance(version, bool) or text not in HPS_FILES:
        raise ValueError(f"hpsv2: version must be 2.0 (the paper's) or 2.1, got {version!r}.")
    return text


def build_open_clip(arch: str | dict, device: torch.device | str = "cpu") -> nn.Module:
    """An open_clip CLIP with random weights: a named architecture or a config dict
    (``embed_dim``, ``vision_cfg``, ``text_cfg``, as in open_clip's model_configs)."""
    import open_clip

    if isinstance(arch, dict):
        return open_clip.model.CLIP(**arch)
    if open_clip.get_model_config(arch) is None:
        raise ValueError(f"hpsv2: unknown open_clip architecture {arch!r} (HPSv2 is {ARCH}).")
    return open_clip.create_model(arch, pretrained=None, device=device)


def open_clip_tokenizer(arch: str | dict):
    import open_clip

    if isinstance(arch, dict):
        return open_clip.tokenizer.SimpleTokenizer(context_length=arch.get("text_cfg", {}).get("context_length", 77))
    return open_clip.get_tokenizer(arch)


class HPSv2(PretrainedReward):
    """HPSv2 score of each image for its prompt.

    path: a checkpoint file (``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt``, or a
    .safetensors copy); None takes the file of ``version`` from the hub model xswu/HPSv2 in
    the Hugging Face cache. version: 2.0 (default, the paper's) or 2.1. arch: the open_clip
    architecture (ViT-H-14) or a config dict (tests use a tiny one). dtype: ``auto`` (bfloat16
    on CUDA, float32 on CPU), float32, bfloat16 or float16.
    """

    reward_name = "hpsv2"

    def __init__(
        self, path: str | None = None, version: str = "2.0", arch: str | dict = ARCH, dtype: str = "auto"
    ) -> None:
        super().__init__(dtype)
        if path is not None and not (isinstance(path, str) and path):
            raise ValueError(f"hpsv2: path must be a checkpoint file path, got {path!r}.")
        if not isinstance(arch, (str, dict)):
            raise ValueError(f"hpsv2: arch must be an open_clip model name or a config dict, got {arch!r}.")
        self.path = path
        self.version = check_version(version)
        self.arch = arch
        self._tokenizer = None

    def checkpoint_file(self):
        if self.path is not None:
            return local_path(
                self.path, reward="hpsv2", option="path", expected=f"an HPSv2 checkpoint ({HPS_FILES[self.version]})"
            )
        return hub_file(HPS_REPO, HPS_FILES[self.version], reward="hpsv2", option="path")

    def check_available(self) -> None:
        if self.path is not None:
            self.checkpoint_file()
        else:
            hub_file_available(HPS_REPO, HPS_FILES[self.version], reward="hpsv2", option="path")

    def load(self) -> nn.Module:
        path = self.checkpoint_file()  # before building the model: a missing file fails fast
        state_dict = load_state_dict_file(path, reward="hpsv2", option="path")
        model = build_open_clip(self.arch)
        name = self.arch if isinstance(self.arch, str) else "the given arch config"
        load_strict(model, state_dict, reward="hpsv2", path=path, expected=f"open_clip {name}")
        return model

    def architecture(self) -> nn.Module:
        """The network with random weights, reading no file, on the default device (``draft plan``
        builds it on the meta device to predict memory)."""
        return build_open_clip(self.arch, torch.get_default_device())

    def encode_prompts(self, net: nn.Module, prompts: list[str]) -> torch.Tensor:
        if self._tokenizer is None:
            self._tokenizer = open_clip_tokenizer(self.arch)
        tokens = self._tokenizer(prompts).to(net.logit_scale.device)
        work = torch.float64 if net.logit_scale.dtype == torch.float64 else torch.float32
        return F.normalize(net.encode_text(tokens).to(work), dim=-1)

    def preprocessor(self, net: nn.Module) -> ImagePreprocess:
        return OPEN_CLIP_LONGEST_224.with_size(net.visual.image_size[0])

    def score_pixels(self, net: nn.Module, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image = F.normalize(net.encode_image(pixels.to(net.logit_scale.dtype)).to(pixels.dtype), dim=-1)
        return (image * self.prompt_features(net, prompts)).sum(dim=-1)

    def extra_repr(self) -> str:
        arch = self.arch if isinstance(self.arch, str) else "custom"
        return f"path={self.path!r}, version={self.version!r}, arch={arch!r}, " + super().extra_repr()
