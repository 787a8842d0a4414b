"""``draft sample``: generate images, optionally with scaled and mixed LoRAs and the paper's baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from draft_core.errors import DraftError


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from draft_core.cli.common import learned_sampling, parse_window, quiet_libraries
    from draft_core.evaluation.baselines import NoiseSource, build_method, build_reward
    from draft_core.lora import LoraSpec, apply_loras
    from draft_core.media import generation_params, save_grid, save_png, to_pil
    from draft_core.models.loading import load_model, resolve_dtype
    from draft_core.plugins import load_registry

    for flag, value in (("--n", args.n), ("--batch-size", args.batch_size), ("--steps", args.steps)):
        if value < 1:
            raise DraftError(f"{flag} must be a positive integer, got {value}.")
    specs = [LoraSpec.parse(s) for s in args.lora]
    method = build_method(args.method, build_reward(args.reward) if args.reward else None)
    sampler = load_registry().build("sampler", args.sampler, steps=args.steps, guidance_scale=args.guidance)
    window = parse_window(args.lora_steps, args.steps)
    quiet_libraries()
    device = torch.device(args.device) if args.device != "auto" else None
    model = load_model(args.model, device)
    if args.dtype != "auto":
        model.to(dtype=resolve_dtype(args.dtype, model.device))
    apply_loras(model.unet, specs)
    learned = None if args.no_learned_sampling else learned_sampling(specs, model, sampler)
    if learned is not None:
        method.condition = learned.condition
    prompts = [p for p in args.prompt for _ in range(args.n)]
    gen = torch.Generator().manual_seed(args.seed)
    noise = model.make_noise(len(prompts), gen)  # drawn as a diffusers pipeline draws it
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    with torch.no_grad():
        for i in range(0, len(prompts), args.batch_size):
            source = NoiseSource.from_generator(noise[i : i + args.batch_size], model, gen)
            made = method.generate(model, sampler, prompts[i : i + args.batch_size], source, lora_steps=window, generator=gen)
            images.append(made.images.cpu())
    images = torch.cat(images)
    params = dict(model=args.model, sampler=args.sampler, steps=args.steps, guidance=args.guidance, seed=args.seed,
                  size=model.image_size, loras=[(s.path, s.scale) for s in specs], method=args.method if args.method != "plain" else None,
                  lora_steps=args.lora_steps, learned=None if learned is None else "from the LoRA folder")
    for i, img in enumerate(images):  # image i: the i-th noise drawn from --seed, for --prompt i // --n
        save_png(to_pil(img), out / f"{i:04d}.png", generation_params(prompts[i], **params, index=i, n=len(prompts)))
    save_grid(images, out / "grid.png", nrow=args.n, rows=args.prompt, cols=[f"#{j}" for j in range(args.n)],
              params=generation_params(args.prompt, **params))
    if args.save_tensor:
        torch.save(images, out / "images.pt")
    print(f"wrote {len(images)} images and grid.png to {out}")
    return 0


def add_parser(sub) -> None:
    sa = sub.add_parser("sample", help="generate images, optionally with scaled and mixed LoRAs")
    sa.add_argument("--model", default="digits", help="embedded model name (digits, tiny-random), diffusers folder, or hub id")
    sa.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    sa.add_argument("--n", type=int, default=4, help="images per prompt")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]", help="a LoRA and its scale (repeatable: mixed linearly)")
    sa.add_argument("--lora-steps", metavar="START:END", help="apply the LoRA only for sampling steps START <= i < END")
    sa.add_argument("--sampler", default="ddim")
    sa.add_argument("--steps", type=int, default=50)
    sa.add_argument("--guidance", type=float, default=7.5)
    sa.add_argument("--batch-size", type=int, default=8)
    sa.add_argument("--device", default="auto")
    sa.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    sa.add_argument("--save-tensor", action="store_true", help="also write images.pt ([N,3,H,W] float in [0,1])")
    sa.add_argument("--method", default="plain", metavar="NAME[:k=v,...]", help="plain, best-of-n[:n=16], doodl[:steps=20,lr=0.05], prompt-template[:template=...]")
    sa.add_argument("--reward", metavar="NAME[:k=v,...]", help="the reward best-of-n and doodl use, e.g. digit-classifier:target=8")
    sa.add_argument("--out", default="samples")
    sa.add_argument("--no-learned-sampling", action="store_true",
                    help="ignore a learned guidance schedule / negative prompt saved beside the LoRA")
    sa.set_defaults(func=cmd_sample)
