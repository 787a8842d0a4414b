"""Preprocessing parity and CPU cost of the learned rewards (aesthetic, hpsv2, pickscore, clip-score, diversity).

    python benchmarks/reward_checks.py [--real-vit-l] [--out results.json]

Parity: each reward's differentiable preprocessing against its model's official processor
(CLIPImageProcessor at the settings of openai/clip-vit-large-patch14 and PickScore's
laion processor; open_clip's resize-longest-and-pad transform for HPSv2) on
scikit-image's astronaut, chelsea, coffee and rocket photos, in grey levels of the [0, 255]
image; then the score difference this makes through the tiny random networks of the
tests. Cost: forward + backward of each reward at the conformance-test size (batch 2,
8x8 images upsampled to the 224 px input, tiny networks), one thread, median of 5 after a
warm-up call that loads the weights. ``--real-vit-l`` also times a randomly initialised
CLIP ViT-L/14 vision tower (the aesthetic reward's network) at batch 1, 224 px, once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from draft_core.rewarding.preprocess import CLIP_STD
from draft_rewards.diversity import Diversity

# the tests' tiny networks and official-processor references
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reward_models import save_all  # noqa: E402
from test_rewards_learned import PHOTOS, PROMPTS, REWARDS, _official_pixels, _photo, make  # noqa: E402


def parity(weights) -> dict:
    out = {}
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    for name in REWARDS:
        reward = make(name, weights)
        rows = {}
        for photo, prompt in zip(PHOTOS, PROMPTS):
            img, x = _photo(photo)
            x = x.float()
            with torch.no_grad():
                ours = reward(x, [prompt])
                official = _official_pixels(name, img)
                pixels = reward.preprocessor(reward.net)(x)
                grey = ((pixels - official) * std).abs() * 255
                theirs = reward.score_pixels(reward.net, official, [prompt])
            rows[photo] = {
                "pixel_max_grey": round(grey.max().item(), 3),
                "pixel_mean_grey": round(grey.mean().item(), 4),
                "score": ours.item(),
                "score_abs_diff": abs(ours.item() - theirs.item()),
            }
        out[name] = rows
    return out


def timing(weights, repeats: int = 5) -> dict:
    out = {}
    g = torch.Generator().manual_seed(0)
    images = 0.25 + 0.5 * torch.rand(2, 3, 8, 8, generator=g)
    prompts = ["a photo of thing 0", "a photo of thing 1"]
    rewards = {name: make(name, weights) for name in REWARDS}
    rewards["diversity"] = Diversity()
    for name, reward in rewards.items():
        reward(images, prompts)  # loads the weights and caches the prompts
        times = []
        for _ in range(repeats):
            x = images.clone().requires_grad_(True)
            start = time.perf_counter()
            reward(x, prompts).sum().backward()
            times.append(time.perf_counter() - start)
        out[name] = {"forward_backward_ms": round(1000 * statistics.median(times), 2)}
    return out


def real_vit_l() -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    # openai/clip-vit-large-patch14's vision tower: 24 layers, width 1024, patch 14, projection 768
    config = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    start = time.perf_counter()
    model = CLIPVisionModelWithProjection(config).eval().requires_grad_(False)
    built = time.perf_counter() - start
    x = torch.rand(1, 3, 224, 224, requires_grad=True)
    start = time.perf_counter()
    model(pixel_values=x).image_embeds.sum().backward()
    return {"build_s": round(built, 2), "forward_backward_s": round(time.perf_counter() - start, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real-vit-l", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_all(Path(tmp))
        result = {"parity": parity(weights), "timing": timing(weights)}
    if args.real_vit_l:
        result["vit_l14_batch1"] = real_vit_l()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
