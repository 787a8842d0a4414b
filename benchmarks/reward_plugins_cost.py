"""Forward + backward time of the plugin rewards (owlvit, adversarial, nsfw) on CPU.

    python benchmarks/reward_plugins_cost.py          # the test models (32 px input), batch 2 of 8x8 images
    python benchmarks/reward_plugins_cost.py --full   # the published architectures, random weights, 1 image of 512 px

The test models are the ones the plugins' tests build (small configs, random weights);
``--full`` builds OWL-ViT B/32 (768 px), ResNet-50 (224 px) and the SD safety checker
(CLIP ViT-L/14, 224 px) from their default configs, so no download is needed. One torch
thread; the median of ``--repeat`` calls after a warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for plugin in ("owlvit", "adversarial", "nsfw"):
    sys.path.insert(0, str(ROOT / "plugins" / f"draft-rewards-{plugin}" / "tests"))
    sys.path.insert(0, str(ROOT / "plugins" / f"draft-rewards-{plugin}"))


def build(full: bool, folder: Path) -> dict:
    import torchvision
    from draft_rewards_adversarial import AdversarialReward
    from draft_rewards_nsfw import NSFWReward
    from draft_rewards_owlvit import OwlViTReward
    from torchvision.models import ResNet50_Weights

    torch.manual_seed(0)
    if full:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import (
            CLIPConfig,
            OwlViTConfig,
            OwlViTForObjectDetection,
            OwlViTImageProcessor,
            OwlViTProcessor,
        )

        from draft_core.models.tokenizer import offline_clip_tokenizer

        OwlViTForObjectDetection(OwlViTConfig()).save_pretrained(folder / "owlvit")
        OwlViTProcessor(OwlViTImageProcessor(), offline_clip_tokenizer(16)).save_pretrained(folder / "owlvit")
        vit_l = dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        )
        StableDiffusionSafetyChecker(CLIPConfig(vision_config=vit_l, projection_dim=768)).save_pretrained(
            folder / "nsfw"
        )
        size = 224
    else:
        from test_nsfw import _small_checker
        from test_owlvit import _save_small

        _save_small("owlvit", folder / "owlvit")
        _small_checker().save_pretrained(folder / "nsfw")
        size = 32
    checkpoints = folder / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(), checkpoints / os.path.basename(ResNet50_Weights.DEFAULT.url))
    os.environ["TORCH_HOME"] = str(folder / "torch")
    return {
        "owlvit": OwlViTReward(["a person", "people"], path=str(folder / "owlvit"), threshold=0.0),
        "adversarial": AdversarialReward("tabby", image_size=size),
        "nsfw": NSFWReward(path=str(folder / "nsfw")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="published architectures at full size")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    batch, side = (1, 512) if args.full else (2, 8)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        rewards = build(args.full, Path(tmp))
        for name, reward in rewards.items():
            images = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
            times = []
            for i in range(args.repeat + 1):
                x = images.clone().requires_grad_(True)
                start = time.perf_counter()
                reward(x, [""] * batch).sum().backward()
                if i:  # the first call loads the weights
                    times.append(time.perf_counter() - start)
            results[name] = round(statistics.median(times), 4)
    print(json.dumps({"full": args.full, "batch": batch, "image": side, "fwd_bwd_seconds": results}))


if __name__ == "__main__":
    main()
