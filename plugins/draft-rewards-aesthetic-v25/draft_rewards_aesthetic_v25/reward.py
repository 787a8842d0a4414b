"""Aesthetic Predictor V2.5 (discus0434/aesthetic-predictor-v2-5): SigLIP so400m and an MLP head.

The image goes through ``SiglipVisionModel`` (``google/siglip-so400m-patch14-384``); its pooled
output p (the attention-pooling head's, 1152-d) is L2-normalised and scored by a five-layer
MLP (1152→1024→128→64→16→1, dropout between, no activations, so affine in eval mode):

    r = head(p / ‖p‖)          (about 1-10; the authors read 5.5 and above as good)

exactly ``AestheticPredictorV2_5Model``'s logits. Preprocessing is SiglipImageProcessor's:
resize to 384 x 384 (bicubic, aspect not kept), mean = std = 0.5, in torch ops so gradients
reach the pixels. Prompts are ignored.

Weights: the SigLIP encoder from the Hugging Face hub id ``encoder`` (or ``path``, a local
folder), and the head's state dict (``aesthetic_predictor_v2_5.pth``, published in the
authors' GitHub repository, not on the hub) from ``head``, a local file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from draft_core.errors import ModelLoadError
from draft_core.rewarding.preprocess import ImagePreprocess
from draft_core.rewarding.pretrained import (
    check_dtype_option,
    check_pretrained_available,
    check_reward_images,
    compute_dtype,
    frozen_model,
    hub_load_error,
)

DEFAULT_ENCODER = "google/siglip-so400m-patch14-384"
HEAD_FILE = "aesthetic_predictor_v2_5.pth"
HEAD_SOURCE = f"github.com/discus0434/aesthetic-predictor-v2-5 (models/{HEAD_FILE})"
#: SiglipImageProcessor of the so400m checkpoint: 384 x 384 bicubic, no crop, mean = std = 0.5.
SIGLIP_384 = ImagePreprocess(size=384, resize="exact", mode="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
_FILES = "the SigLIP vision encoder's config.json and weights"


def scoring_head(hidden_size: int) -> nn.Sequential:
    """The predictor's MLP, with the module indices of its state dict (``scoring_head.{0,2,4,6,8}``)."""
    return nn.Sequential(
        nn.Linear(hidden_size, 1024),
        nn.Dropout(0.5),
        nn.Linear(1024, 128),
        nn.Dropout(0.5),
        nn.Linear(128, 64),
        nn.Dropout(0.5),
        nn.Linear(64, 16),
        nn.Dropout(0.2),
        nn.Linear(16, 1),
    )


#: google/siglip-so400m-patch14-384's vision_config (its config.json), for ``architecture()``.
SO400M_384 = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    patch_size=14,
    image_size=384,
)


class _Predictor(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.scoring_head = scoring_head(encoder.config.hidden_size)


class AestheticV25Reward(nn.Module):
    """Aesthetic Predictor V2.5 score [B] of images [B, 3, H, W] in [0, 1].

    head: the head's weights, a local ``aesthetic_predictor_v2_5.pth`` (a torch state dict;
    a .safetensors copy works too). encoder: the SigLIP hub id; path: a local folder with the
    encoder instead (as written by save_pretrained or ``hf download``). dtype: ``auto``
    (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16.
    """

    def __init__(
        self, head: str | None = None, encoder: str = DEFAULT_ENCODER, path: str | None = None, dtype: str = "auto"
    ) -> None:
        super().__init__()
        if head is not None and not (isinstance(head, str) and head):
            raise ValueError(f"aesthetic-v25: head must be the path of {HEAD_FILE}, got {head!r}.")
        self.head, self.encoder_id, self.path = head, encoder, path
        self.dtype = check_dtype_option(dtype, "aesthetic-v25")

    @property
    def source(self) -> str:
        return str(Path(self.path).expanduser()) if self.path is not None else self.encoder_id

    def _head_file(self) -> Path:
        if self.head is None or not Path(self.head).expanduser().is_file():
            where = "no `head:` was given" if self.head is None else f"head '{self.head}' is not a file"
            raise ModelLoadError(
                f"aesthetic-v25: {where}. The predictor's head weights are published outside the Hugging Face"
                f" hub, at {HEAD_SOURCE}: download that file on a machine with network and give its path as"
                f" `head:` (reward.head=/path/to/{HEAD_FILE})."
            )
        return Path(self.head).expanduser()

    def check_available(self) -> None:
        """The head file exists and the encoder can be found (``path``, or the hub cache). Loads nothing."""
        self._head_file()
        check_pretrained_available("aesthetic-v25", self.encoder_id, self.path, files=_FILES)

    def architecture(self) -> nn.Module:
        """Encoder and head with random weights, reading no weights (``draft plan`` builds them on the
        meta device): the default encoder's configuration is known; another one's config.json (a
        local folder, or the hub cache) is read."""
        from transformers import SiglipVisionConfig, SiglipVisionModel

        if self.path is None and self.encoder_id == DEFAULT_ENCODER:
            config = SiglipVisionConfig(**SO400M_384)
        else:
            try:
                config = SiglipVisionConfig.from_pretrained(self.source)
            except (OSError, ValueError) as exc:
                raise hub_load_error("aesthetic-v25", self.source, exc, files=_FILES, hub_id=self.encoder_id) from exc
        return _Predictor(SiglipVisionModel(config))

    def load(self) -> nn.Module:
        from transformers import SiglipVisionModel

        head_file = self._head_file()  # before the encoder: a missing file fails fast
        try:
            encoder = SiglipVisionModel.from_pretrained(self.source)
        except (OSError, ValueError) as exc:
            raise hub_load_error("aesthetic-v25", self.source, exc, files=_FILES, hub_id=self.encoder_id) from exc
        predictor = _Predictor(encoder)
        if head_file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(head_file))
        else:
            state = torch.load(head_file, map_location="cpu", weights_only=True)
        state = {k.removeprefix("layers."): v for k, v in state.items()}
        try:
            predictor.load_state_dict({f"encoder.{k}": v for k, v in encoder.state_dict().items()} | state)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"aesthetic-v25: {head_file} is not the predictor's head for a {encoder.config.hidden_size}-d"
                f" encoder ({str(exc).splitlines()[0]}); expected {HEAD_FILE} from {HEAD_SOURCE}."
            ) from exc
        return predictor

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1], any size. Returns [B] (float32; float64 for float64 images)."""
        check_reward_images(images, "aesthetic-v25")
        dtype = compute_dtype(images, self.dtype)
        net = frozen_model(("aesthetic-v25", self.source, self.head), self.load, images.device, dtype, owner=self)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        pixels = SIGLIP_384.with_size(net.encoder.config.image_size)(images.to(work)).to(dtype)
        pooled = net.encoder(pixel_values=pixels).pooler_output
        # normalise and score in float32 at least: the head sees a unit vector whose direction matters
        return net.scoring_head(F.normalize(pooled.to(work), dim=-1).to(dtype)).to(work).squeeze(-1)

    def extra_repr(self) -> str:
        return f"encoder={self.source!r}, head={self.head!r}"
