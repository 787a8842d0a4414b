"""In-batch diversity (paper B.8): each image's dissimilarity to its partner in the reversed batch.

The paper pairs image i with image B-1-i ("reversing the elements of a minibatch"), B/2
pairs, rather than all B(B-1)/2. Here each image gets its pair's value, so the result is [B]
and each pair counts twice (once per image); with an odd batch the middle image is its own
partner and scores 0. This reward depends on the whole batch by design: add it to another
reward with a weight (``reward.weights: {aesthetic: 1, diversity: 0.1}``).

Dissimilarities: ``euclidean`` (default), the root-mean-square pixel difference, i.e. the
Euclidean distance divided by sqrt(3·H·W) so that values (in [0, 1]) compare across sizes;
``lpips`` (Zhang et al. 2018) through the ``lpips`` package, which must be installed and
find its backbone's torchvision weights in the torch hub cache (nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from draft_core.errors import ModelLoadError
from draft_core.rewarding.checks import check_image_batch

METRICS = ("euclidean", "lpips")
#: torchvision weight files that lpips' backbones load (``torch.hub`` cache, ``checkpoints/``).
LPIPS_BACKBONES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def reversed_pairs(images: torch.Tensor) -> torch.Tensor:
    """The partner of each image: image i pairs with image B-1-i."""
    return images.flip(0)


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B] root-mean-square difference of [B, ...] tensors; 0 with a zero gradient where a == b."""
    sq = (a - b).square().flatten(1).mean(dim=1)
    positive = sq > 0
    # sqrt has an infinite slope at 0: keep identical pairs (the middle of an odd batch) out of it.
    return torch.where(positive, sq.where(positive, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def load_lpips(net: str) -> nn.Module:
    """lpips' metric with backbone ``net``, frozen; ModelLoadError when the package or weights are missing."""
    try:
        import lpips
    except ImportError as exc:
        raise ModelLoadError(
            "diversity: metric 'lpips' needs the lpips package (pip install lpips); "
            "or use the default metric 'euclidean' (--set reward.metric=euclidean)."
        ) from exc
    weights = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONES[net]
    if not weights.is_file():
        raise ModelLoadError(
            f"diversity: LPIPS with backbone '{net}' needs torchvision's weights file {weights.name} in the torch hub "
            f"cache ({weights}); nothing is downloaded here. Copy it there from a machine that has it (or set "
            f"TORCH_HOME to a folder with checkpoints/{weights.name}), or use metric 'euclidean'."
        )
    model = lpips.LPIPS(net=net, pretrained=True, verbose=False)
    return model.requires_grad_(False).eval()


class Diversity(nn.Module):
    """``r_i = d(x_i, x_{B-1-i})``: dissimilarity of each image to its reversed-batch partner; [B].

    metric: ``euclidean`` (RMS pixel difference, in [0, 1]) or ``lpips``. lpips_net: the LPIPS
    backbone (alex, vgg, squeeze). Prompts are ignored.
    """

    uses_prompts = False

    def __init__(self, metric: str = "euclidean", lpips_net: str = "alex") -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"diversity: metric must be one of {', '.join(METRICS)}, got {metric!r}.")
        if lpips_net not in LPIPS_BACKBONES:
            raise ValueError(f"diversity: lpips_net must be one of {', '.join(LPIPS_BACKBONES)}, got {lpips_net!r}.")
        self.metric = metric
        self.lpips_net = lpips_net
        self.lpips: nn.Module | None = None

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1]; returns [B] (float32, float64 for float64 input)."""
        check_image_batch(images, "diversity")
        x = images if images.dtype == torch.float64 else images.float()
        partner = reversed_pairs(x)
        if self.metric == "euclidean":
            return rms_distance(x, partner)
        if self.lpips is None:
            self.lpips = load_lpips(self.lpips_net)
        self.lpips.to(device=x.device, dtype=x.dtype).eval()
        # LPIPS takes images in [-1, 1].
        return self.lpips(x * 2 - 1, partner * 2 - 1).flatten()

    def extra_repr(self) -> str:
        return f"metric={self.metric!r}" + (f", lpips_net={self.lpips_net!r}" if self.metric == "lpips" else "")
