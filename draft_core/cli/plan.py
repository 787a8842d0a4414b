"""``draft plan``: predict a training step's peak device memory and FLOPs without loading weights,
and, with a budget, the changes that fit it.

Exit status: 0 when the config fits (or no budget is given), 1 when it does not but a change
does (they are listed), 2 when no change fits (or on bad input).
"""

from __future__ import annotations

import argparse
import json
import sys


def cmd_plan(args: argparse.Namespace) -> int:
    from draft_core.cli.common import quiet_libraries
    from draft_core.config import load_config
    from draft_core.errors import DraftError
    from draft_core.planning.architectures import PlanError
    from draft_core.planning.budget import parse_bytes
    from draft_core.planning.fitting import propose, refusal
    from draft_core.planning.step import plan_step

    if not args.config and not args.preset:
        raise DraftError("draft plan needs a CONFIG.yaml or --preset NAME (e.g. draft plan --preset quickstart).")
    config = load_config(args.config, args.set, preset=args.preset)
    raw_budget = args.budget if args.budget is not None else config.train.memory_budget
    budget = (
        None
        if raw_budget is None
        else parse_bytes(raw_budget, "--budget" if args.budget is not None else "config key 'train.memory_budget'")
    )
    quiet_libraries()
    say = (lambda m: print(f"[draft] {m}", file=sys.stderr)) if not args.json else (lambda m: None)
    say(f"tracing one training step on the meta device as {args.device_type} would run it")
    if args.processes < 1:
        raise DraftError(f"--processes must be a positive integer, got {args.processes}.")
    trace = plan_step(config, args.device_type, args.dtype, args.processes, budget)
    proposals = []
    if budget is not None and trace.peak > budget:
        proposals = propose(config, budget, args.device_type, args.dtype, progress=say, processes=args.processes)
    if args.json:
        print(json.dumps(_as_json(config, trace, budget, proposals), indent=2))
    else:
        print(_table(config, trace, budget, proposals))
    if budget is None or trace.peak <= budget:
        return 0
    if any(p.fits(budget) for p in proposals):
        return 1
    raise PlanError(refusal(trace.peak, budget, proposals, "draft plan"))


def _summary(config) -> str:
    est = ", ".join(f"{k}={v}" for k, v in config.estimator.items() if k != "name")
    from draft_core.rewarding.spec import reward_label

    reward = reward_label(config.reward)
    return (
        f"{config.model.name}, {config.estimator['name']}({est}), reward {reward}, "
        f"batch {config.train.batch_size} x grad_accum {config.train.grad_accum}, "
        f"{config.sampler.get('name')} {config.sampler.get('steps', '')} steps, LoRA rank {config.lora.rank}"
    )


def _table(config, trace, budget, proposals) -> str:
    from draft_core.planning.budget import format_bytes, format_flops, smallest_card
    from draft_core.planning.fitting import KIND_COSTS

    per = f", per device of {trace.processes} processes (the frozen base sharded)" if trace.processes > 1 else ""
    lines = [f"draft plan: {_summary(config)}", f"on {trace.device_type}, weights in {trace.dtype}{per}", ""]
    labels = {"activations": "activations at the peak"}
    for cat, n in trace.breakdown.items():
        lines.append(f"  {labels.get(cat, cat):28s} {format_bytes(n):>11s}")
    card = smallest_card(trace.peak)
    lines += [
        f"  {'total peak':28s} {format_bytes(trace.peak):>11s}   "
        f"smallest card: {f'{card} GiB' if card else 'over 80 GiB'}",
        f"  {'FLOPs of the step':28s} {format_flops(trace.flops):>11s}",
        f"  {'step cost / sampling alone':28s} {trace.cost_ratio:>10.2f}x   (FLOP ratio)",
        "",
        "Bytes allocated to tensors at the peak; a caching allocator (CUDA's) reserves more, and kernels' "
        "workspaces (cuDNN) are not counted, so leave some headroom.",
    ]
    lines += [f"note: {n}" for n in trace.notes]
    if budget is not None:
        lines.append("")
        if trace.peak <= budget:
            lines.append(f"fits the budget of {format_bytes(budget)} ({100 * trace.peak / budget:.0f}% of it).")
        else:
            lines.append(
                f"over the budget of {format_bytes(budget)} by {format_bytes(trace.peak - budget)}. "
                f"Changes, those that fit first (cheapest first):"
            )
            width = max([len(p.label) for p in proposals] + [6])
            lines.append(f"  fits  {'change':{width}s} {'peak':>10s} {'step cost':>10s}  kind")
            for p in proposals:
                lines.append(
                    f"  {'yes' if p.fits(budget) else 'no':4s}  {p.label:{width}s} {format_bytes(p.peak):>10s} "
                    f"{p.trace.cost_ratio:>9.2f}x  {p.kind} ({KIND_COSTS[p.kind]})"
                )
                lines.append(f"        --set {' --set '.join(p.overrides)}")
    return "\n".join(lines)


def _as_json(config, trace, budget, proposals) -> dict:
    from draft_core.planning.fitting import KIND_COSTS

    def one(t):
        return {
            "peak_bytes": t.peak,
            "breakdown_bytes": t.breakdown,
            "flops": t.flops,
            "sampling_flops": t.sampling_flops,
            "cost_ratio": t.cost_ratio,
        }

    return {
        "config": _summary(config),
        "device_type": trace.device_type,
        "dtype": trace.dtype,
        "processes": trace.processes,
        **one(trace),
        "notes": trace.notes,
        "budget_bytes": budget,
        "fits": None if budget is None else trace.peak <= budget,
        "proposals": [
            {
                "label": p.label,
                "set": p.overrides,
                "kind": p.kind,
                "costs": KIND_COSTS[p.kind],
                "fits": p.fits(budget),
                **one(p.trace),
            }
            for p in proposals
        ],
    }


def add_parser(sub) -> None:
    pl = sub.add_parser(
        "plan",
        help="predict a training step's peak memory and FLOPs, and what fits a budget",
        description="Trace one training step of a config (sampling, decode, reward, backward, optimiser step) on "
        "the meta device, without weights, and print its predicted peak device memory by category, its "
        "FLOPs and its cost relative to sampling alone. With a budget, propose the changes that fit. "
        "Exit status: 0 fits (or no budget), 1 over budget but a listed change fits, 2 nothing fits.",
    )
    pl.add_argument("config", nargs="?", help="a YAML config (as for draft train)")
    pl.add_argument("--preset", help="a built-in config (quickstart)")
    pl.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    pl.add_argument("--budget", help="device memory to fit, e.g. 24GiB or 80GB (default: train.memory_budget)")
    pl.add_argument(
        "--device-type", choices=["cuda", "cpu"], default="cuda", help="the device the run will use (default cuda)"
    )
    pl.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="the model's weights (default: model.dtype; auto is bfloat16 on cuda, float32 on cpu)",
    )
    pl.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="the peak per device with the frozen base sharded (FSDP2) across N processes, each running "
        "train.batch_size / N samples (default 1)",
    )
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(func=cmd_plan)
