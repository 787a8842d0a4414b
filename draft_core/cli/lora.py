"""``draft lora mix | export | fuse | push``: share a trained LoRA outside draft."""

from __future__ import annotations

import argparse
from pathlib import Path

from draft_core.errors import DraftError
from draft_core.outputs import usual_permissions


def cmd_mix(args: argparse.Namespace) -> int:
    from draft_core.lora import LoraSpec
    from draft_core.lora.card import command_line, write_model_card
    from draft_core.lora.files import read_lora, save_mixed
    from draft_core.lora.loading import base_model_of

    specs = [LoraSpec.parse(s) for s in args.loras]
    path = save_mixed(specs, args.out, family=args.family)
    bases = {base_model_of(s.folder) for s in specs} - {None}
    rank = next(iter(read_lora(path).modules.values())).rank
    write_model_card(
        args.out,
        {
            "base_model": bases.pop() if len(bases) == 1 else (sorted(bases) or None),
            "mix": [{"lora": str(s.path), "weight": s.scale} for s in specs],
            "rank": rank,
            "exact": "yes: ranks concatenated, the merged delta is the weighted sum of the deltas",
            "command": command_line(),
        },
    )
    usual_permissions(args.out)
    print(f"wrote {path} (rank {rank}) and {Path(args.out) / 'README.md'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from draft_core.lora import LoraSpec
    from draft_core.lora.files import export_kohya

    if args.format != "kohya":
        raise DraftError(f"--format '{args.format}' is not supported; the one export format is kohya.")
    spec = LoraSpec.parse(args.lora)
    if spec.scale != 1.0:
        raise DraftError(
            f"lora export takes a LoRA without :SCALE (got {args.lora}); to export a scaled LoRA, `draft lora mix {spec.path}:{spec.scale:g} --out DIR` first."
        )
    out = export_kohya(spec.path, args.out, family=args.family)
    usual_permissions(out)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:  # the prefixes really written (lora_unet, lora_transformer, lora_te1, ...)
        prefixes = sorted({"_".join(k.split(".", 1)[0].split("_")[:2]) for k in f.keys()})
    shown = ", ".join(f"{p}_*" for p in prefixes)
    print(f"wrote {out} (kohya layout: {shown}.lora_down/lora_up/alpha; loads in AUTOMATIC1111, ComfyUI, diffusers)")
    return 0


def _family_of_lora(spec, family: str | None):
    """The family class a LoRA was trained on: --family, else its recorded base model's (run config or
    model card); None when neither says (the UNet layout is written)."""
    from draft_core.lora.loading import base_model_of
    from draft_core.models.loading import check_model, family_of_pipeline

    if family is not None:
        return family_of_pipeline(None, str(spec.path), family)
    base = base_model_of(spec.folder)
    if base is None:
        return None
    try:
        return check_model(base)
    except DraftError as exc:
        raise DraftError(
            f"{exc} (lora export looked up the model the LoRA was trained on, '{base}', for its family; "
            f"give --family sd|sdxl|sd3|flux to skip the look-up.)"
        ) from None


def cmd_fuse(args: argparse.Namespace) -> int:
    from draft_core.cli.common import load_for_sampling
    from draft_core.lora import LoraSpec
    from draft_core.lora.files import fuse_lora_into_model
    from draft_core.lora.validate import check_lora_spec

    specs = [LoraSpec.parse(s) for s in args.lora]
    if not specs:
        raise DraftError("draft lora fuse needs at least one --lora PATH[:SCALE].")
    for spec in specs:
        check_lora_spec(spec)  # a bad file is refused before the model loads
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise DraftError(f"--out '{out}' exists and is not empty; choose a new folder for the fused pipeline.")
    model = load_for_sampling(args)
    fuse_lora_into_model(model, specs)
    model.save_pretrained(out)
    usual_permissions(out)
    pixel = getattr(model, "vae", None) is None and model.family == "sd"
    kind = (
        "draft's load_model (a pixel-space model, no VAE)" if pixel else f"{model.pipeline_classes[0]}.from_pretrained"
    )
    print(f"wrote a diffusers pipeline folder with the LoRA fused to {out}; load it with {kind} or --model {out}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from draft_core.lora.push import check_repo_id, listing, push, run_lora, stage

    run = Path(args.run)
    check_repo_id(args.repo)
    run_lora(run)
    if args.dry_run:
        staged = stage(run, args.repo)
        print(f"would upload to {args.repo} ({'private' if args.private else 'public'}):")
    else:
        url, staged = push(run, args.repo, private=args.private)
        print(f"uploaded to {url} ({'private' if args.private else 'public'}):")
    for name, size in listing(staged):
        print(f"  {name:<44} {size / 1024:>9.1f} KiB")
    print(f"staged in {staged}" + (" (nothing was uploaded: --dry-run)" if args.dry_run else ""))
    return 0


FAMILY_HELP = (
    "the model family whose LoRA layout to write (sd, sdxl, ...) or a model naming it; default: the family of "
    "the base model the LoRA's run or model card records, else the one its keys imply (sd for a UNet)"
)


def add_parser(sub) -> None:
    lo = sub.add_parser(
        "lora",
        help="mix LoRAs, export them for AUTOMATIC1111/ComfyUI, fuse one into a pipeline, or push one to the Hub",
    )
    lsub = lo.add_subparsers(dest="lora_command", required=True)

    mx = lsub.add_parser(
        "mix", help="bake a linear combination of LoRAs into one diffusers LoRA (exact, ranks concatenated)"
    )
    mx.add_argument("loras", nargs="+", metavar="PATH:WEIGHT")
    mx.add_argument("--out", required=True, help="folder for pytorch_lora_weights.safetensors and README.md")
    mx.add_argument("--family", metavar="FAMILY_OR_MODEL", help=FAMILY_HELP)
    mx.set_defaults(func=cmd_mix)

    ex = lsub.add_parser("export", help="write a LoRA in the kohya key layout (AUTOMATIC1111, ComfyUI)")
    ex.add_argument("lora", metavar="PATH", help="a LoRA folder, run folder or .safetensors file")
    ex.add_argument("--format", default="kohya", help="kohya (the only one)")
    ex.add_argument("--out", required=True, help="the .safetensors file to write")
    ex.add_argument("--family", metavar="FAMILY_OR_MODEL", help=FAMILY_HELP)
    ex.set_defaults(func=cmd_export)

    fu = lsub.add_parser("fuse", help="fold LoRA(s) into the base weights and save a full diffusers pipeline folder")
    fu.add_argument("--model", default="digits", help="embedded model name, diffusers folder, or hub id")
    fu.add_argument(
        "--lora", action="append", default=[], metavar="PATH[:SCALE]", help="a LoRA and its scale (repeatable)"
    )
    fu.add_argument("--device", default="cpu")
    fu.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    fu.add_argument("--out", required=True)
    fu.set_defaults(func=cmd_fuse)

    pu = lsub.add_parser(
        "push", help="upload a run's LoRA, model card (with its curve and grids) and kohya file to the Hugging Face Hub"
    )
    pu.add_argument("run", metavar="RUN_DIR", help="a run folder written by draft train")
    pu.add_argument(
        "--repo", required=True, metavar="USER/NAME", help="the Hub model repository (created when missing)"
    )
    pu.add_argument("--private", action="store_true", help="create the repository private")
    pu.add_argument(
        "--dry-run", action="store_true", help="stage the files in RUN_DIR/push and list them; upload nothing"
    )
    pu.set_defaults(func=cmd_push)
