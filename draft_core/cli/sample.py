"""``draft sample``: generate images, optionally with scaled and mixed LoRAs and the paper's baselines."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from draft_core.errors import DraftError

EARLIER = re.compile(r"\d{4}\.png|grid\.png|images\.pt")  # what an earlier draft sample wrote


def check_out(out: Path, overwrite: bool) -> list[Path]:
    """``--out`` must be a folder (or not exist yet, under folders); the files of an earlier ``draft sample``
    there are refused, or with ``--overwrite`` returned to be removed, so no stale image stays beside the new ones."""
    if out.exists() and not out.is_dir():
        raise DraftError(f"--out '{out}' is a file; give a folder for the images (it is created if missing).")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise DraftError(f"--out '{out}' is inside '{parent}', which is a file, not a folder.")
    earlier = sorted(p for p in out.iterdir() if p.is_file() and EARLIER.fullmatch(p.name)) if out.is_dir() else []
    if earlier and not overwrite:
        shown = ", ".join(p.name for p in earlier[:4]) + (f" and {len(earlier) - 4} more" if len(earlier) > 4 else "")
        raise DraftError(
            f"--out '{out}' already holds {len(earlier)} files of an earlier draft sample ({shown}). Choose another "
            f"--out, or add --overwrite to remove them and write the new images in their place."
        )
    return earlier


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from draft_core.api import generate
    from draft_core.cli.common import learned_sampling, load_for_sampling, parse_window, resolve_device, sampler_for
    from draft_core.evaluation.baselines import build_method, build_reward
    from draft_core.lora import LoraSpec, apply_loras
    from draft_core.lora.redact import local_path
    from draft_core.lora.validate import check_lora_spec
    from draft_core.media import generation_params, save_grid, save_png, to_pil

    for flag, value in (("--n", args.n), ("--batch-size", args.batch_size), ("--steps", args.steps)):
        if value is not None and value < 1:
            raise DraftError(f"{flag} must be a positive integer, got {value}.")
    specs = [LoraSpec.parse(s) for s in args.lora]
    for spec in specs:
        check_lora_spec(spec)  # a bad file is refused before the model loads
    method = build_method(args.method, build_reward(args.reward) if args.reward else None)
    section, sampler = sampler_for(args, specs)  # the model's (or the LoRA run's) steps and guidance unless given
    args.sampler, args.steps, args.guidance = section["name"], section.get("steps"), section.get("guidance_scale")
    window = parse_window(args.lora_steps, args.steps)
    resolve_device(args.device)
    out = Path(args.out)
    earlier = check_out(out, args.overwrite)
    model = load_for_sampling(args)
    apply_loras(model, specs, model_name=args.model)
    learned = None if args.no_learned_sampling else learned_sampling(specs, model, sampler)
    if learned is not None:
        method.condition = learned.condition
    prompts = [p for p in args.prompt for _ in range(args.n)]
    images = generate(model, sampler, method, prompts, seed=args.seed, batch_size=args.batch_size, lora_steps=window)
    out.mkdir(parents=True, exist_ok=True)
    for path in earlier:
        path.unlink()
    shown_model = (
        local_path(args.model) if args.model.startswith("/") else args.model
    )  # PNGs get shared: no absolute paths
    params = dict(
        model=shown_model,
        sampler=args.sampler,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        size=model.image_size,
        loras=[(local_path(s.path), s.scale) for s in specs],
        method=args.method if args.method != "plain" else None,
        lora_steps=args.lora_steps,
        learned=None if learned is None else "from the LoRA folder",
    )
    for i, img in enumerate(images):  # image i: the i-th noise drawn from --seed, for --prompt i // --n
        save_png(to_pil(img), out / f"{i:04d}.png", generation_params(prompts[i], **params, index=i, n=len(prompts)))
    save_grid(
        images,
        out / "grid.png",
        nrow=args.n,
        rows=args.prompt,
        cols=[f"#{j}" for j in range(args.n)],
        params=generation_params(args.prompt, **params),
    )
    if args.save_tensor:
        torch.save(images, out / "images.pt")
    replaced = f" (replacing the {len(earlier)} files of an earlier draft sample there)" if earlier else ""
    print(f"wrote {len(images)} images and grid.png to {out}{replaced}")
    return 0


def add_parser(sub) -> None:
    sa = sub.add_parser("sample", help="generate images, optionally with scaled and mixed LoRAs")
    sa.add_argument(
        "--model", default="digits", help="embedded model name (digits, tiny-random), diffusers folder, or hub id"
    )
    sa.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    sa.add_argument("--n", type=int, default=4, help="images per prompt")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="a LoRA and its scale (repeatable: mixed linearly)",
    )
    sa.add_argument("--lora-steps", metavar="START:END", help="apply the LoRA only for sampling steps START <= i < END")
    sa.add_argument("--sampler", help="default: the model family's (ddim; euler for flow-matching models)")
    sa.add_argument(
        "--steps", type=int, help="default: the model's (50; FLUX.1-dev 28, digits-flow 20), or with --lora the run's"
    )
    sa.add_argument(
        "--guidance",
        type=float,
        help="default: the model's (7.5; FLUX.1-dev 3.5, digits-flow 8), or with --lora the run's",
    )
    sa.add_argument("--batch-size", type=int, default=8)
    sa.add_argument("--device", default="auto")
    sa.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    sa.add_argument("--save-tensor", action="store_true", help="also write images.pt ([N,3,H,W] float in [0,1])")
    sa.add_argument(
        "--method",
        default="plain",
        metavar="NAME[:k=v,...]",
        help="plain, best-of-n[:n=16], doodl[:steps=20,lr=0.05], prompt-template[:template=...]",
    )
    sa.add_argument(
        "--reward", metavar="NAME[:k=v,...]", help="the reward best-of-n and doodl use, e.g. digit-classifier:target=8"
    )
    sa.add_argument("--out", default="samples", help="folder for NNNN.png and grid.png")
    sa.add_argument("--overwrite", action="store_true", help="replace the images of an earlier draft sample in --out")
    sa.add_argument(
        "--no-learned-sampling",
        action="store_true",
        help="ignore a learned guidance schedule / negative prompt saved beside the LoRA",
    )
    sa.set_defaults(func=cmd_sample)
