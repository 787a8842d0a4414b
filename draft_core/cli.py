"""The ``draft`` command line: plugins, train, sample, score (in ``cli_score``).

Input errors (config, names, paths) print one paragraph and exit 2, with no traceback;
an interrupted run exits 130 after checkpointing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from draft_core.errors import DraftError


def _quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# -- draft plugins ------------------------------------------------------------------
def cmd_plugins(args: argparse.Namespace) -> int:
    from draft_core.plugins import format_plugins, load_registry

    registry = load_registry()
    if args.json:
        print(json.dumps(registry.describe(), indent=2))
    else:
        print(format_plugins(registry))
    return 0


# -- draft train --------------------------------------------------------------------
def _default_run_dir(args: argparse.Namespace) -> Path:
    stem = args.preset or (Path(args.config).stem if args.config else "run")
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args: argparse.Namespace) -> int:
    from draft_core.config import load_config
    from draft_core.inputs import check_new_run_dir
    from draft_core.runner import Trainer, build_components

    if args.resume:
        if args.config or args.preset or args.out:
            raise DraftError(
                "--resume continues a run in its own folder with its own config.yaml; give --set overrides, "
                "not a config, --preset or --out."
            )
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise DraftError(f"--resume {run_dir}: no config.yaml there; give the folder of an earlier `draft train` run.")
        config = load_config(run_dir / "config.yaml", args.set)
    else:
        if not args.config and not args.preset:
            raise DraftError("draft train needs a CONFIG.yaml or --preset NAME (e.g. draft train --preset quickstart).")
        config = load_config(args.config, args.set, preset=args.preset)
        run_dir = Path(args.out) if args.out else _default_run_dir(args)
        check_new_run_dir(run_dir)
    components = build_components(config)  # every name and argument checked before the model loads
    for note in components.warnings:
        print(f"[draft] warning: {note}", file=sys.stderr)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    _quiet_libraries()
    trainer = Trainer(config, run_dir, components, progress=not args.no_progress)
    trainer.setup(resume=bool(args.resume))
    trainer.log(
        f"{config.model.name} on {trainer.model.device} ({trainer.model.dtype}), LoRA rank {config.lora.rank} "
        f"({sum(p.numel() for p in trainer.params):,} parameters), estimator {components.estimator!r}, "
        f"sampler {components.sampler!r}, run folder {run_dir}"
    )
    t0 = time.perf_counter()
    last = trainer.train()
    trainer.log(
        f"done: {trainer.step} steps in {time.perf_counter() - t0:.1f} s; final reward {last.get('reward_mean', float('nan')):.4g}; "
        f"LoRA in {run_dir / 'lora'}, grids in {run_dir / 'samples'}, curve {run_dir / 'reward_curve.png'}"
    )
    return 0


# -- draft sample -------------------------------------------------------------------
def _parse_window(text: str | None, steps: int) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        fields = text.split(":")
        if len(fields) != 2:
            raise ValueError(text)
        start, end = (int(v) if v else d for v, d in zip(fields, (0, steps)))
    except ValueError:
        raise DraftError(f"--lora-steps '{text}' must be START:END step indices (e.g. 0:20 or 30:), with 0 <= START <= END <= {steps}.") from None
    if not 0 <= start <= end <= steps:
        raise DraftError(f"--lora-steps '{text}' is outside 0..{steps}; give START:END with 0 <= START <= END <= {steps}.")
    return start, end


def _learned_sampling(specs, model, sampler):
    """The learned guidance schedule / negative prompt saved beside the first LoRA that has them."""
    from draft_core.sampler_params import LearnedSampling

    found = [(s, LearnedSampling.load(s.folder, model.device)) for s in specs]
    found = [(s, learned) for s, learned in found if learned is not None]
    if not found:
        return None
    spec, learned = found[0]
    learned.attach(sampler)
    parts = [p for p, on in (("guidance schedule", learned.guidance), ("negative prompt", learned.negative)) if on is not None]
    note = f" (ignoring those of {len(found) - 1} other LoRA(s))" if len(found) > 1 else ""
    print(f"using the learned {' and '.join(parts)} from {spec.path}{note}; --no-learned-sampling turns them off", file=sys.stderr)
    return learned


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from draft_core.baselines import NoiseSource, build_method, build_reward
    from draft_core.lora import LoraSpec, apply_loras
    from draft_core.media import save_grid
    from draft_core.models.loading import load_model, resolve_dtype
    from draft_core.plugins import load_registry
    from torchvision.utils import save_image

    for flag, value in (("--n", args.n), ("--batch-size", args.batch_size), ("--steps", args.steps)):
        if value < 1:
            raise DraftError(f"{flag} must be a positive integer, got {value}.")
    specs = [LoraSpec.parse(s) for s in args.lora]
    method = build_method(args.method, build_reward(args.reward) if args.reward else None)
    sampler = load_registry().build("sampler", args.sampler, steps=args.steps, guidance_scale=args.guidance)
    window = _parse_window(args.lora_steps, args.steps)
    _quiet_libraries()
    device = torch.device(args.device) if args.device != "auto" else None
    model = load_model(args.model, device)
    if args.dtype != "auto":
        model.to(dtype=resolve_dtype(args.dtype, model.device))
    apply_loras(model.unet, specs)
    learned = None if args.no_learned_sampling else _learned_sampling(specs, model, sampler)
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
    for i, img in enumerate(images):
        save_image(img, out / f"{i:04d}.png")
    save_grid(images, out / "grid.png", nrow=args.n)
    if args.save_tensor:
        torch.save(images, out / "images.pt")
    print(f"wrote {len(images)} images and grid.png to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="draft", description="Fine-tune diffusion models on differentiable rewards (DRaFT).")
    sub = p.add_subparsers(dest="command", required=True)

    pl = sub.add_parser("plugins", help="list registered samplers, estimators and rewards, and plugin load errors")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.set_defaults(func=cmd_plugins)

    tr = sub.add_parser("train", help="fine-tune a LoRA on a reward")
    tr.add_argument("config", nargs="?", help="a YAML config")
    tr.add_argument("--preset", help="a built-in config (quickstart)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    tr.add_argument("--out", help="run folder (default runs/NAME-TIMESTAMP)")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    tr.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, then exit")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

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

    from draft_core import cli_eval, cli_lora, cli_score

    cli_eval.add_parser(sub)
    cli_lora.add_parser(sub)
    cli_score.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from draft_core.inputs import check_argv_text

    try:
        check_argv_text(sys.argv[1:] if argv is None else argv)
    except DraftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DraftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from draft_core.runner import Interrupted

        if isinstance(exc, Interrupted):
            return 130
        raise


if __name__ == "__main__":
    sys.exit(main())
