"""Tiny random stand-ins for the learned rewards' networks, saved in each official file format.

Real architectures, small configs: a transformers CLIPModel folder (PickScore / CLIP /
the aesthetic predictor's ViT-L/14), an open_clip checkpoint ``{'state_dict': ...}`` (HPSv2),
and an aesthetic head with the key names of ``sac+logos+ava1-l14-linearMSE.pth``. Images
are 224 px as in the real models, with 32 px patches (49 tokens) so a forward pass is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

EMBED = 16
TINY_CLIP_CONFIG = {
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
    },
    "vision_config": {
        "image_size": 224,
        "patch_size": 32,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    },
    "projection_dim": EMBED,
}
TINY_OPEN_CLIP = {
    "embed_dim": EMBED,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
# (out, in) of the improved aesthetic predictor's five Linear layers, on an EMBED-d input.
AESTHETIC_SHAPES = {0: (1024, EMBED), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(**TINY_CLIP_CONFIG)).eval()
    model.save_pretrained(folder)
    return folder


def save_tiny_hps(path: Path, seed: int = 0) -> Path:
    """An open_clip CLIP in HPSv2's checkpoint format: ``torch.save({'state_dict': ...})``."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.model.CLIP(**TINY_OPEN_CLIP)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def aesthetic_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The improved predictor's state dict layout (``layers.{0,2,4,6,7}``), random values."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (out, inp) in AESTHETIC_SHAPES.items():
        sd[f"layers.{i}.weight"] = torch.randn(out, inp, generator=g) / inp**0.5
        sd[f"layers.{i}.bias"] = torch.randn(out, generator=g) * 0.1
    return sd


def save_aesthetic_head(path: Path, seed: int = 0) -> Path:
    torch.save(aesthetic_state_dict(seed), path)
    return path


def save_all(root: Path) -> dict[str, Path]:
    """Every tiny checkpoint under ``root``: keys clip, hps, aesthetic."""
    root.mkdir(parents=True, exist_ok=True)
    return {
        "clip": save_tiny_clip(root / "clip"),
        "hps": save_tiny_hps(root / "HPS_v2_compressed.pt"),
        "aesthetic": save_aesthetic_head(root / "sac+logos+ava1-l14-linearMSE.pth"),
    }


def fake_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = "0" * 40) -> Path:
    """Lay out ``files`` as the Hugging Face cache holds a model repo's snapshot; returns the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        os.symlink(source, snapshot / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
