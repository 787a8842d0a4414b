"""``draft eval``: sample held-out prompts, score them with one or more rewards, write the table.

Rows: each ``--method`` (default plain) on the model with the ``--lora`` mix, and also on the
base model with ``--base``. Output: the Markdown table on stdout, and ``table.md``,
``table.csv``, ``results.json`` (every score) and ``contact_sheet.png`` (one row per
configuration) in ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from draft_core.errors import DraftError


def cmd_eval(args: argparse.Namespace) -> int:
    from draft_core.cli.common import learned_sampling, load_for_sampling, parse_window
    from draft_core.evaluation import RowSpec, evaluate, load_prompt_set, to_markdown, write_outputs
    from draft_core.evaluation.baselines import build_method, build_reward
    from draft_core.lora import LoraSpec, apply_loras
    from draft_core.lora.card import command_line
    from draft_core.plugins import load_registry
    from draft_core.plugins.bases import as_reward

    for flag, value in (
        ("--n-per-prompt", args.n_per_prompt),
        ("--batch-size", args.batch_size),
        ("--steps", args.steps),
    ):
        if value is not None and value < 1:
            raise DraftError(f"{flag} must be a positive integer, got {value}.")
    # Every name, file and argument is checked before the model loads.
    items = load_prompt_set(args.prompts, args.prompts_per_category)
    registry = load_registry()
    rewards = {text: build_reward(text, registry) for text in dict.fromkeys(args.reward)}
    selector = next(iter(rewards.values()))  # best-of-n and DOODL select/optimise with the first reward
    methods = [build_method(text, selector) for text in (args.method or ["plain"])]
    specs = [LoraSpec.parse(s) for s in args.lora]
    from draft_core.cli.common import sampler_for

    section, sampler = sampler_for(
        args, specs, registry
    )  # the model's (or the LoRA run's) steps and guidance unless given
    args.sampler, args.steps, args.guidance = section["name"], section.get("steps"), section.get("guidance_scale")
    window = parse_window(args.lora_steps, args.steps)
    configs = ([[]] if args.base or not specs else []) + ([specs] if specs else [])
    rows = [RowSpec(list(c), m) for c in configs for m in methods]

    model = load_for_sampling(args)
    apply_loras(model, specs, model_name=args.model)
    learned = None if args.no_learned_sampling else learned_sampling(specs, model, sampler)
    for reward in rewards.values():
        as_reward(reward).to(model.device)
    log = (lambda msg: print(f"[draft eval] {msg}", file=sys.stderr)) if not args.quiet else None
    result = evaluate(
        model,
        sampler,
        rows,
        items,
        rewards,
        n_per_prompt=args.n_per_prompt,
        seed=args.seed,
        batch_size=args.batch_size,
        lora_steps=window,
        sheet_columns=args.sheet_columns,
        progress=log,
        learned=learned,
    )
    result.settings = {
        "command": command_line(),
        "model": args.model,
        "prompts": args.prompts,
        "sampler": repr(sampler),
        "sampler_name": args.sampler,
        "steps": args.steps,
        "guidance": args.guidance,
    }
    paths = write_outputs(result, Path(args.out))
    print(to_markdown(result))
    for r in result.rows:
        plain = next((p for p in result.rows if p.method == "plain" and p.loras == r.loras), None)
        if plain is not None and r is not plain:
            print(f"cost of {r.label}: {r.seconds / plain.seconds:.1f}x the time of {plain.label}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="score a model, its LoRAs and baselines on held-out prompts with several rewards")
    ev.add_argument(
        "--model", default="digits", help="embedded model name (digits, tiny-random), diffusers folder, or hub id"
    )
    ev.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="a LoRA and its scale (repeatable: mixed linearly into one configuration)",
    )
    ev.add_argument("--base", action="store_true", help="also evaluate the base model (no LoRA)")
    ev.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME[:k=v,...]",
        help="plain (default), best-of-n[:n=16], doodl[:steps=20,lr=0.05], prompt-template[:template=...] (repeatable: one row each)",
    )
    ev.add_argument(
        "--prompts",
        required=True,
        help="animals, digits, a text file (optionally category<TAB>prompt), a JSON array file, or an HPDv2 benchmark folder",
    )
    ev.add_argument("--prompts-per-category", type=int, metavar="K", help="the first K prompts of each category")
    ev.add_argument(
        "--reward",
        action="append",
        required=True,
        metavar="NAME[:k=v,...]",
        help="a registered reward with its arguments, e.g. digit-classifier:target=8 (repeatable; the first selects for best-of-n and DOODL)",
    )
    ev.add_argument("--n-per-prompt", type=int, default=4)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--sampler", help="default: the model family's (ddim; euler for flow-matching models)")
    ev.add_argument(
        "--steps", type=int, help="default: the model's (50; FLUX.1-dev 28, digits-flow 20), or with --lora the run's"
    )
    ev.add_argument(
        "--guidance",
        type=float,
        help="default: the model's (7.5; FLUX.1-dev 3.5, digits-flow 8), or with --lora the run's",
    )
    ev.add_argument("--lora-steps", metavar="START:END", help="apply the LoRA only for sampling steps START <= i < END")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--sheet-columns", type=int, default=8, help="prompts shown per row of contact_sheet.png")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ev.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ev.add_argument(
        "--no-learned-sampling",
        action="store_true",
        help="ignore a learned guidance schedule / negative prompt saved beside the LoRA",
    )
    ev.add_argument("--out", default="eval", help="folder for table.md, table.csv, results.json, contact_sheet.png")
    ev.set_defaults(func=cmd_eval)
