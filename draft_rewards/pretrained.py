"""The common part of the rewards built on pretrained networks (aesthetic, HPSv2, PickScore, CLIP).

``PretrainedReward`` loads its network on the first call (construction and ``draft
plugins`` stay cheap), freezes it (no parameter needs a gradient, eval mode always), moves
it to the images' device and to the run's dtype, and caches prompt embeddings, which need
no gradient. Subclasses give ``load()``, ``preprocessor()``, ``score_pixels()``
and, when they read prompts, ``encode_prompts()``.

dtype ``auto`` computes in bfloat16 on CUDA and float32 on CPU, as the diffusion model of a
run does; float64 images are computed in float64 (for gradcheck). Scores come back as
float32 (float64 for float64 computation), shape [B].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from draft_core.rewarding.checks import check_image_batch
from draft_core.rewarding.preprocess import ImagePreprocess

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HALF = (torch.bfloat16, torch.float16)
#: distinct prompts kept per reward; the cache is cleared when full (prompt sets are usually small).
PROMPT_CACHE_SIZE = 4096


def check_dtype(dtype: str, reward: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"{reward}: dtype must be one of {', '.join(map(repr, DTYPES))}, got {dtype!r}.")
    return dtype


def check_prompts(prompts: Sequence[str], batch: int, reward: str) -> list[str]:
    """``prompts`` as a list of ``batch`` strings, or ValueError."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{reward}: prompts must be a list of strings, one per image, got {prompts!r}.")
    prompts = list(prompts)
    if len(prompts) != batch:
        raise ValueError(f"{reward}: got {batch} images but {len(prompts)} prompts; give one prompt per image.")
    return prompts


class PretrainedReward(nn.Module):
    """A frozen network scoring images [B, 3, H, W] in [0, 1] (and their prompts); see the module doc."""

    #: the registered name, used in messages.
    reward_name = "reward"
    #: whether the score depends on the prompt (``draft score`` then needs --prompt).
    uses_prompts = True

    def __init__(self, dtype: str = "auto") -> None:
        super().__init__()
        self.dtype_name = check_dtype(dtype, self.reward_name)
        self.net: nn.Module | None = None
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._cache_key: tuple | None = None

    # -- for subclasses -----------------------------------------------------------------------

    def load(self) -> nn.Module:
        """Build the network with its weights, float32 on the CPU."""
        raise NotImplementedError

    def preprocessor(self, net: nn.Module) -> ImagePreprocess:
        """The differentiable counterpart of the model's official image processor."""
        raise NotImplementedError

    def score_pixels(self, net: nn.Module, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """pixels: [B, 3, S, S] model input (normalised), float32 or float64 -> [B] in that dtype."""
        raise NotImplementedError

    def encode_prompts(self, net: nn.Module, prompts: list[str]) -> torch.Tensor:
        """[N, D] embeddings of distinct prompts (called without autograd)."""
        raise NotImplementedError

    def check_available(self) -> None:
        """The weights ``load()`` will read can be found (a local file or folder, or the hub cache; online,
        the hub is asked at the first call). Loads nothing; raises ModelLoadError naming what is missing."""

    # -- machinery --------------------------------------------------------------------------

    def compute_dtype(self, images: torch.Tensor) -> torch.dtype:
        explicit = DTYPES[self.dtype_name]
        if explicit is not None:
            return explicit
        if images.dtype == torch.float64:
            return torch.float64
        return torch.bfloat16 if images.device.type == "cuda" else torch.float32

    def network(self, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """The frozen network on ``device`` in ``dtype``, loaded on first use."""
        net = self.net
        current = next(net.parameters()) if net is not None else None
        # Half-precision weights cannot go back up without loss: reload them instead.
        if net is None or (current.dtype in _HALF and dtype != current.dtype):
            net = self.load().requires_grad_(False).eval()
            self.net = net
            self._cache_key = None
            current = next(net.parameters())
        if current.device != device or current.dtype != dtype:
            net.to(device=device, dtype=dtype)
        # Cached prompt embeddings belong to one placement of the network (which a caller's
        # .to() may also have changed since the last call).
        if self._cache_key != (device, dtype):
            self._prompt_cache.clear()
            self._cache_key = (device, dtype)
        if net.training:  # a caller's .train() must not switch dropout on
            net.eval()
        return net

    def prompt_features(self, net: nn.Module, prompts: list[str]) -> torch.Tensor:
        """[B, D] prompt embeddings, each distinct prompt encoded once (then cached)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            if len(self._prompt_cache) + len(missing) > PROMPT_CACHE_SIZE:
                self._prompt_cache.clear()
            with torch.no_grad():
                features = self.encode_prompts(net, missing)
            self._prompt_cache.update(zip(missing, features))
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1], any size and device; prompts: B strings. Returns [B]."""
        check_image_batch(images, self.reward_name)
        prompts = check_prompts(prompts, images.shape[0], self.reward_name) if self.uses_prompts else []
        dtype = self.compute_dtype(images)
        net = self.network(images.device, dtype)
        # Resizing and the final normalisation and dot products run in float32 at least.
        work = torch.float64 if dtype == torch.float64 else torch.float32
        return self.score_pixels(net, self.preprocessor(net)(images.to(work)), prompts)

    def model_dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def extra_repr(self) -> str:
        return f"dtype={self.dtype_name!r}, loaded={self.net is not None}"
