"""ImageReward (Xu et al. 2023, THUDM/ImageReward): human preference for an image given its prompt.

The prompt's tokens attend to the image's ViT tokens through BERT's cross-attention; the MLP reads
the [CLS] output, and the result is standardised with the training set's mean and std:

    r = (MLP(BERT(prompt | ViT(image))[CLS]) − 0.16717) / 1.03334      (about −2 .. 2)

exactly ``ImageReward.score`` (``draft_rewards_imagereward.model``). Preprocessing is ImageReward's
``_transform(224)``: shortest side to 224 (bicubic), centre crop, CLIP mean/std, in torch ops so
gradients reach the pixels. Prompts: bert-base-uncased's tokenizer with BLIP's two added tokens,
padded to 35 tokens and truncated there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from draft_core.rewarding.preprocess import OPEN_CLIP_224
from draft_core.rewarding.pretrained import check_dtype_option, check_reward_images, compute_dtype, frozen_model
from draft_rewards.hub import (
    hub_file,
    hub_file_available,
    load_state_dict_file,
    load_strict,
    local_path,
    looks_like_path,
)
from draft_rewards.pretrained import check_prompts
from draft_rewards_imagereward.model import ARCH, MAX_TOKENS, ImageRewardNet, convert_state_dict

HUB_REPO, HUB_FILE = "THUDM/ImageReward", "ImageReward.pt"
DEFAULT_TOKENIZER = "bert-base-uncased"


class ImageRewardReward(nn.Module):
    """ImageReward score [B] of images [B, 3, H, W] in [0, 1] for their prompts.

    path: the checkpoint file (``ImageReward.pt``, or a .safetensors copy); None takes it from the
    hub model THUDM/ImageReward in the Hugging Face cache. tokenizer: bert-base-uncased's hub id,
    a local folder with its files, or the path of its vocab.txt (what the offline error suggests).
    arch: the network's sizes (``model.ARCH``; tests give a tiny one). dtype: ``auto`` (bfloat16 on
    CUDA, float32 on CPU), float32, bfloat16 or float16.
    """

    def __init__(
        self,
        path: str | None = None,
        tokenizer: str = DEFAULT_TOKENIZER,
        arch: dict[str, dict[str, Any]] | None = None,
        dtype: str = "auto",
    ) -> None:
        super().__init__()
        if path is not None and not (isinstance(path, str) and path):
            raise ValueError(f"imagereward: path must be the path of {HUB_FILE}, got {path!r}.")
        if arch is not None and not (isinstance(arch, dict) and set(arch) == {"vision", "text"}):
            raise ValueError(f"imagereward: arch must be a dict with 'vision' and 'text' configs, got {arch!r}.")
        self.path, self.tokenizer_id, self.arch = path, tokenizer, arch or ARCH
        self.dtype = check_dtype_option(dtype, "imagereward")
        self._tokenizer = None

    def checkpoint_file(self) -> Path:
        if self.path is not None:
            return local_path(
                self.path, reward="imagereward", option="path", expected=f"ImageReward's checkpoint ({HUB_FILE})"
            )
        return hub_file(HUB_REPO, HUB_FILE, reward="imagereward", option="path")

    def vocab_file(self) -> Path:
        """The tokenizer's vocab.txt: ``tokenizer`` itself (a path to a vocab.txt), in the local folder
        ``tokenizer``, or of that hub id in the cache. (transformers 5 quietly builds a 5-token
        vocabulary for a tokenizer it cannot find.)"""
        folder = Path(self.tokenizer_id).expanduser()
        if folder.name == "vocab.txt" and folder.is_file():
            return folder
        if folder.is_dir() or looks_like_path(self.tokenizer_id):
            return local_path(
                folder / "vocab.txt",
                reward="imagereward",
                option="tokenizer",
                expected=f"bert-base-uncased's vocab.txt (`hf download {DEFAULT_TOKENIZER} --local-dir DIR`)",
            )
        return hub_file(self.tokenizer_id, "vocab.txt", reward="imagereward", option="tokenizer")

    def check_available(self) -> None:
        """The checkpoint and the tokenizer can be found (local, or the hub cache). Loads nothing."""
        if self.path is not None:
            self.checkpoint_file()
        else:
            hub_file_available(HUB_REPO, HUB_FILE, reward="imagereward", option="path")
        if Path(self.tokenizer_id).expanduser().is_dir() or looks_like_path(self.tokenizer_id):
            self.vocab_file()
        else:
            hub_file_available(self.tokenizer_id, "vocab.txt", reward="imagereward", option="tokenizer")

    def load(self) -> nn.Module:
        path = self.checkpoint_file()  # before building the network: a missing file fails fast
        state = convert_state_dict(load_state_dict_file(path, reward="imagereward", option="path"))
        net = ImageRewardNet(self.arch)
        load_strict(net, state, reward="imagereward", path=path, expected="ImageReward (BLIP ViT-L + BERT + MLP)")
        return net

    def architecture(self) -> nn.Module:
        """The network with random weights, reading no checkpoint (``draft plan`` builds it on the meta
        device; it still tokenizes the prompts, so the tokenizer's vocab.txt must be found)."""
        return ImageRewardNet(self.arch)

    def tokenizer(self):
        """bert-base-uncased's tokenizer with BLIP's [DEC] and [ENC] (ids 30522 and 30523, as in BLIP)."""
        if self._tokenizer is None:
            from transformers import BertTokenizer

            tok = BertTokenizer.from_pretrained(str(self.vocab_file().parent))
            tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
            self._tokenizer = tok
        return self._tokenizer

    def tokens(self, prompts: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [B, 35], as ImageReward.score tokenizes."""
        batch = self.tokenizer()(
            list(prompts), padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        return batch.input_ids.to(device), batch.attention_mask.to(device)

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1]; prompts: B strings. Returns [B] (float32; float64 for float64 images)."""
        check_reward_images(images, "imagereward")
        prompts = check_prompts(prompts, images.shape[0], "imagereward")
        dtype = compute_dtype(images, self.dtype)
        key = ("imagereward", self.path, repr(self.arch))
        net = frozen_model(key, self.load, images.device, dtype, owner=self)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        pixels = OPEN_CLIP_224.with_size(net.vision.config.image_size)(images.to(work)).to(dtype)
        ids, mask = self.tokens(prompts, images.device)
        return net(pixels, ids, mask).to(work)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, tokenizer={self.tokenizer_id!r}"
