"""A grid of the ``digits`` or ``digits-flow`` model's samples (N per canonical prompt) and how varied the samples of one prompt are.

    python benchmarks/digits_variety.py --model digits-flow [--n 4] [--weights DIR] [--grid FILE] [--out FILE]
    python benchmarks/digits_variety.py --model digits-flow --grid docs/images/digits-flow-grid.png

Samples are drawn as ``digits_quality.py`` draws them (the same noise seeds, the model's
default steps and guidance unless given). Variety within a prompt is the mean over pairs of
samples of that prompt of the mean absolute pixel difference ([0, 1] pixels), averaged over the
ten prompts; at 32x32, and at 8x8 (4x4 averages, the data's own resolution), where speckle and
patch texture, which differ between samples of one shape, average out and the shapes remain. For scale, the same number for the data: N real digits of each
class (sklearn's 8x8 digits upsampled as the models were trained), drawn with the seed. A model
that draws one image per prompt scores 0; one that draws the data's variety scores about the
data's figure. The grid is one row per prompt, at the models' 32 px (cells enlarged to 64 px
with nearest-neighbour, so no smoothing is added).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import digits_quality
import torch

from draft_core.media import save_grid
from draft_core.models import digits_flow
from draft_core.models.digits import WEIGHTS_DIR, build_digits
from draft_core.models.digits.data import DIGIT_WORDS, load_images
from draft_core.samplers.ddim import DDIMSampler


def within_prompt_distance(images: torch.Tensor, pool: int = 1) -> float:
    """Mean over pairs of ``images`` ([n, 3, H, W] in [0, 1]) of the mean absolute pixel difference,
    after ``pool`` x ``pool`` averaging."""
    if pool > 1:
        images = torch.nn.functional.avg_pool2d(images, pool)
    pairs = list(itertools.combinations(range(images.shape[0]), 2))
    return sum((images[i] - images[j]).abs().mean().item() for i, j in pairs) / len(pairs)


def data_variety(n: int, seed: int, pool: int = 1) -> float:
    """The same measure over n real digits per class (the training images, mapped to [0, 1])."""
    images, labels = load_images()
    gen = torch.Generator().manual_seed(seed)
    per = []
    for digit in range(10):
        members = torch.nonzero(labels == digit).flatten()
        pick = members[torch.randperm(len(members), generator=gen)[:n]]
        per.append(within_prompt_distance((images[pick] / 2 + 0.5).clamp(0, 1), pool))
    return sum(per) / 10


def draw(
    model_name: str, n: int, seed: int, steps: int | None, guidance: float | None, weights: Path | None
) -> tuple[list[torch.Tensor], int, float]:
    """n samples per digit, [n, 3, 32, 32] each, in digits_quality's order and noise."""
    if model_name == "digits":
        steps, guidance = steps or 50, guidance or 7.5
        model = build_digits(weights or WEIGHTS_DIR)
        sampler = DDIMSampler(steps=steps, guidance_scale=guidance)
        return [digits_quality.sample_digit(model, sampler, d, n, seed) for d in range(10)], steps, guidance
    steps = steps or digits_flow.DEFAULT_STEPS
    guidance = guidance or digits_flow.DEFAULT_GUIDANCE
    parts = digits_flow.build_digits_flow(weights or digits_flow.WEIGHTS_DIR)
    return [digits_quality.sample_flow_digit(parts, d, n, seed, steps, guidance) for d in range(10)], steps, guidance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=digits_quality.MODELS, default="digits-flow")
    ap.add_argument("--n", type=int, default=4, help="samples per prompt (at least 2)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", type=Path, default=None, help="a folder written by the model's training script")
    ap.add_argument("--grid", type=Path, default=None, help="write the grid PNG here")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.n < 2:
        ap.error(f"--n {args.n}: variety needs at least 2 samples per prompt")
    with torch.no_grad():
        per_digit, steps, guidance = draw(args.model, args.n, args.seed, args.steps, args.guidance, args.weights)
    result = {
        "model": args.model,
        "weights": str(args.weights) if args.weights else None,
        "n": args.n,
        "steps": steps,
        "guidance_scale": guidance,
        "seed": args.seed,
    }
    for name, pool in (("32px", 1), ("8x8", 4)):
        variety = {DIGIT_WORDS[d]: within_prompt_distance(x, pool) for d, x in enumerate(per_digit)}
        result[name] = {
            "per_digit": variety,
            "mean": sum(variety.values()) / 10,
            "data_mean": data_variety(args.n, args.seed, pool),
        }
        print(
            f"{args.model} at {name}: within-prompt mean |pixel difference| {result[name]['mean']:.4f} "
            f"(data: {result[name]['data_mean']:.4f}); " + ", ".join(f"{k} {v:.3f}" for k, v in variety.items())
        )
    if args.grid:
        save_grid(
            torch.cat(per_digit),
            args.grid,
            nrow=args.n,
            rows=[f"{d}" for d in range(10)],
            title=f"{args.model}: {steps} steps, CFG {guidance:g}, seed {args.seed}",
        )
        print(f"wrote {args.grid}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
