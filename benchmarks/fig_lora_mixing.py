"""LoRA scaling and mixing at toy scale (paper Figure 7), on ``digits``.

    python benchmarks/fig_lora_mixing.py [--sampler-steps 10] [--train-steps 30] [--lr 3e-3]

Two LoRAs trained with DRaFT-LV on different rewards, with the settings of
fig_sample_efficiency.py (shared through the run cache): A on the digit classifier with
target 8, B on ``--reward-b`` (default jpeg-incompressibility). They are applied at
sampling time as ``draft sample --lora A:α --lora B:β`` applies them
(draft_core.lora.apply_loras: W = W0 + α ΔW_A + β ΔW_B).

- Scaling: one row per scale α in {0, 0.25, 0.5, 0.75, 1} of A, one column per digit
  prompt, the same noise in every row; with A's reward of each row.
- Mixing: a grid over α (rows) and β (columns) in {0, 0.5, 1} for fixed prompts and noise,
  with both rewards of each cell.
Writes results/lora_scaling.png, results/lora_mixing.png and results/lora_mixing.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from toy import RESULTS, REWARD_8, add_training_args, common_settings, machine, settings, train_run

from draft_core.lora import LoraSpec, apply_loras
from draft_core.media import save_grid
from draft_core.models import load_model
from draft_core.models.digits.data import PROMPTS
from draft_core.plugins import load_registry
from draft_core.samplers.ddim import DDIMSampler

SCALES = [0.0, 0.25, 0.5, 0.75, 1.0]
MIX = [0.0, 0.5, 1.0]


def enlarge(images: torch.Tensor, factor: int = 3) -> torch.Tensor:
    """Nearest-neighbour upscaling, so that 32 px samples are legible in the grids."""
    return torch.nn.functional.interpolate(images, scale_factor=factor, mode="nearest")


@torch.no_grad()
def sample(model, sampler, prompts: list[str], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = model.make_noise(len(prompts), gen)
    return model.decode(sampler.sample(model, model.encode_prompts(prompts), noise, generator=gen))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_args(ap)
    ap.add_argument("--reward-b", default="jpeg-incompressibility")
    ap.add_argument("--mix-prompts", type=int, nargs="+", default=[3, 5], help="digits shown in each mixing cell")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    common = common_settings(a)
    lv = {"name": "draft-lv", "n": 2}
    run_a = train_run(settings(lv, 0, **common), a.train_steps, a.eval_every)
    run_b = train_run(settings(lv, 0, reward={"name": a.reward_b}, **common), a.train_steps, a.eval_every)
    registry = load_registry()
    reward_a = registry.build("reward", REWARD_8["name"], target=REWARD_8["target"])
    reward_b = registry.build("reward", a.reward_b)
    model = load_model("digits")
    names = apply_loras(model, [LoraSpec.parse(f"{run_a['lora']}:1"), LoraSpec.parse(f"{run_b['lora']}:0")])
    sampler = DDIMSampler(steps=a.sampler_steps, guidance_scale=7.5)
    result: dict = {
        "settings": {
            **common,
            "train_steps": a.train_steps,
            "reward_a": "digit-classifier target 8",
            "reward_b": a.reward_b,
            "runs": [run_a["tag"], run_b["tag"]],
        },
        "scaling": [],
        "mixing": [],
    }

    rows = []
    for s in SCALES:
        model.denoiser.set_adapters(names, weights=[s, 0.0])
        images = sample(model, sampler, PROMPTS, seed=7)
        rows.append(images)
        result["scaling"].append(
            {
                "scale_a": s,
                "reward_a": reward_a(images, PROMPTS).mean().item(),
                "reward_b": reward_b(images, PROMPTS).mean().item(),
            }
        )
        print(
            f"A x {s:4.2f}: reward A {result['scaling'][-1]['reward_a']:.3f}, reward B {result['scaling'][-1]['reward_b']:.5f}"
        )
    save_grid(enlarge(torch.cat(rows)), a.out_dir / "lora_scaling.png", nrow=len(PROMPTS))

    prompts = [PROMPTS[d] for d in a.mix_prompts]
    cells = []
    for alpha in MIX:
        for beta in MIX:
            model.denoiser.set_adapters(names, weights=[alpha, beta])
            images = sample(model, sampler, prompts, seed=11)
            cells.append(images)
            result["mixing"].append(
                {
                    "alpha_a": alpha,
                    "beta_b": beta,
                    "reward_a": reward_a(images, prompts).mean().item(),
                    "reward_b": reward_b(images, prompts).mean().item(),
                }
            )
            print(
                f"A x {alpha:3.1f} + B x {beta:3.1f}: reward A {result['mixing'][-1]['reward_a']:.3f}, "
                f"reward B {result['mixing'][-1]['reward_b']:.5f}"
            )
    # One grid row per alpha; each cell holds the prompts side by side.
    save_grid(enlarge(torch.cat(cells)), a.out_dir / "lora_mixing.png", nrow=len(MIX) * len(prompts))
    result["machine"] = machine()
    (a.out_dir / "lora_mixing.json").write_text(json.dumps(result, indent=1))
    print(
        f"wrote {a.out_dir / 'lora_scaling.png'}, {a.out_dir / 'lora_mixing.png'} and {a.out_dir / 'lora_mixing.json'}"
    )
    return result


if __name__ == "__main__":
    main()
