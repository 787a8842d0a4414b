"""Does the ``ocr`` reward (PP-OCR, real weights) read ``digits``' samples? For the leaderboard's no-gradient task.

    python benchmarks/digits_ocr.py [--n 10] [--margin 0 16] [--seed 0] [--out FILE]

For each digit, N base-model samples (50 DDIM steps, CFG 7.5, the noise of digits_quality.py)
are read by ``OCRReward(target=str(digit))`` at each margin; prints how many it reads exactly as
the prompted digit, per digit, and what it reads for "a handwritten digit three".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from digits_quality import sample_digit
from draft_rewards_ocr import OCRReward

from draft_core.models.digits import WEIGHTS_DIR, build_digits
from draft_core.models.digits.data import PROMPTS
from draft_core.samplers.ddim import DDIMSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--margin", type=int, nargs="+", default=[0, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model, sampler = build_digits(WEIGHTS_DIR), DDIMSampler(steps=50, guidance_scale=7.5)
    samples = {d: sample_digit(model, sampler, d, args.n, args.seed) for d in range(10)}
    results = {}
    for margin in args.margin:
        start = time.perf_counter()
        per_digit, reads_three, reward_three = {}, None, None
        for d in range(10):
            reward = OCRReward(target=str(d), margin=margin)
            reads = reward.read(samples[d])
            per_digit[d] = sum(r.replace(" ", "") == str(d) for r in reads)
            if d == 3:
                reads_three = reads
                reward_three = reward(samples[d], [PROMPTS[3]] * args.n).mean().item()
        seconds = time.perf_counter() - start
        results[margin] = {
            "exact": sum(per_digit.values()),
            "of": 10 * args.n,
            "per_digit": per_digit,
            "reads_of_three": reads_three,
            "mean_reward_three": reward_three,
            "seconds": seconds,
        }
        print(
            f"margin {margin}: {sum(per_digit.values())}/{10 * args.n} read exactly; per digit {per_digit};"
            f" '{PROMPTS[3]}' reads {reads_three}, mean reward {reward_three:.3f}; {seconds:.1f} s",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
