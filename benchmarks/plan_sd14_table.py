"""docs/memory.md's tables: ``draft plan``'s predictions for Stable Diffusion 1.4 at 512 px, and
for SDXL, SD3.5-medium and FLUX.1-dev at 1024 px (``--family``).

    python benchmarks/plan_sd14_table.py [--out benchmarks/results/plan_sd14.json]
    python benchmarks/plan_sd14_table.py --family sdxl --rewards hpsv2 [--no-fit] --out benchmarks/results/plan_sdxl.json

Rows: DRaFT-1, DRaFT-LV (n = 2), DRaFT-K (K = 10) and full DRaFT (every UNet step
checkpointed), with HPSv2 or PickScore as the reward, at batch 1 and 4; 50 DDIM steps,
guidance 7.5, LoRA rank 32 (float32) on attention and feed-forward, weights in bfloat16, on
CUDA. Nothing is downloaded: every network is built from its published configuration on the
meta device. For each row: the predicted peak and its split, the step's FLOPs over sampling
alone, the smallest card (24/40/48/80 GiB) it fits, and, for a row that does not fit 24 GiB,
the fitting proposals (``draft plan --budget``) against each card in turn: the smallest card
that some proposal fits, and the cheapest such proposal. SD 1.4 first: other model families
are named by ``--family`` (sd, the default, is SD 1.4): each at its native resolution with its
default sampler, steps and guidance (gpu_scale.FAMILIES: SDXL ddim 50 steps guidance 5; SD3.5
euler 28 steps guidance 7; FLUX.1-dev euler 28 steps, distilled guidance 3.5). ``--no-fit``
skips the fitting proposals (each traces the step again), and a batch-4 row then reports, as its
card after fitting, the batch-1 row's card: micro-batches of 1 x 4, the same samples per update.
``--set`` and ``--tag`` add rows with other settings,
e.g. without the decode and reward checkpointing that draft turns on by default:

    python benchmarks/plan_sd14_table.py --rewards hpsv2 --set train.checkpoint_decode=false \
        --set train.checkpoint_reward=false --tag "decode/reward not checkpointed" --out ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchlib import write_json

CASES = {
    "DRaFT-1": {"name": "draft-k", "k": 1},
    "DRaFT-LV n=2": {"name": "draft-lv", "n": 2},
    "DRaFT-K K=10": {"name": "draft-k", "k": 10},
    "full DRaFT": {"name": "draft"},
}
REWARDS = ("hpsv2", "pickscore")
GiB = 2**30


def family_settings(family: str) -> list[str]:
    from gpu_scale import FAMILIES

    s = FAMILIES[family]
    sampler = "ddim" if family in ("sd", "sdxl") else "euler"
    return [
        f"model.name={s.name}",
        f"sampler.name={sampler}",
        f"sampler.steps={s.steps}",
        f"sampler.guidance_scale={s.guidance}",
    ]


def row_config(case: str, reward: str, batch: int, extra: list[str] = (), family: str = "sd"):
    from draft_core.config import load_config

    return load_config(
        None,
        [
            *family_settings(family),
            "model.dtype=bfloat16",
            "lora.rank=32",
            f"train.batch_size={batch}",
            f"reward.name={reward}",
            f"estimator={json.dumps(CASES[case])}",
            *extra,
        ],
    )


def main(argv: list[str] | None = None) -> dict:
    from draft_core.planning.budget import CARDS_GIB, smallest_card
    from draft_core.planning.fitting import propose, rank
    from draft_core.planning.step import plan_step

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--rewards", nargs="+", default=list(REWARDS), choices=list(REWARDS))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for every row")
    ap.add_argument("--tag", default="", help="appended to each row's key (rows with other overrides)")
    ap.add_argument("--markdown", action="store_true", help="only print the table of the rows in --out")
    ap.add_argument("--family", default="sd", choices=["sd", "sdxl", "sd3", "flux"], help="sd: SD 1.4 (module doc)")
    ap.add_argument("--no-fit", action="store_true", help="no fitting proposals (module doc)")
    ap.add_argument(
        "--compact",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="only print the compact table (docs/memory.md) of these families' rows (one JSON each)",
    )
    a = ap.parse_args(argv)
    if a.compact:
        print(compact({p: json.loads(p.read_text())["rows"] for p in a.compact}))
        return {}
    if a.markdown:
        rows = json.loads(a.out.read_text())["rows"]
        print(markdown(rows))
        return {"rows": rows}
    rows = json.loads(a.out.read_text())["rows"] if a.out and a.out.exists() else {}  # an interrupted run goes on
    for batch in a.batches:
        for reward in a.rewards:
            for case in a.cases:
                key = f"{case} | {reward} | batch {batch}" + (f" | {a.tag}" if a.tag else "")
                if key in rows:
                    continue
                t0 = time.perf_counter()
                config = row_config(case, reward, batch, a.set, a.family)
                trace = plan_step(config, "cuda")
                before = smallest_card(trace.peak)
                row = {
                    "family": a.family,
                    "set": a.set,
                    "peak_bytes": trace.peak,
                    "breakdown_bytes": trace.breakdown,
                    "flops": trace.flops,
                    "cost_ratio": trace.cost_ratio,
                    "card_before": before,
                    "card_after": before,
                    "proposal": None,
                }
                one = rows.get(key.replace(f"batch {batch}", "batch 1"))
                if a.no_fit and batch > 1 and one and before != CARDS_GIB[0]:
                    row.update(
                        card_after=one["card_before"],
                        proposal={
                            "label": f"micro-batches of 1 x {batch} (the batch-1 row's peak)",
                            "set": ["train.batch_size=1", f"train.grad_accum={batch}"],
                            "peak_bytes": one["peak_bytes"],
                            "cost_ratio": one["cost_ratio"],
                        },
                    )
                elif before != CARDS_GIB[0] and not a.no_fit:
                    proposals = propose(
                        config,
                        CARDS_GIB[0] * GiB,
                        "cuda",
                        progress=lambda m: print(f"    {m}", file=sys.stderr, flush=True),
                    )
                    for card in CARDS_GIB:
                        fits = rank(proposals, card * GiB)
                        if fits and fits[0].fits(card * GiB):
                            best = fits[0]
                            row.update(
                                card_after=card,
                                proposal={
                                    "label": best.label,
                                    "set": best.overrides,
                                    "peak_bytes": best.peak,
                                    "cost_ratio": best.trace.cost_ratio,
                                },
                            )
                            break
                    row["proposals"] = [
                        {"label": p.label, "set": p.overrides, "peak_bytes": p.peak, "cost_ratio": p.trace.cost_ratio}
                        for p in proposals
                    ]
                row["seconds"] = time.perf_counter() - t0
                rows[key] = row
                print(
                    f"{key:36s} {trace.peak / GiB:6.2f} GiB  {trace.cost_ratio:5.2f}x  card {before}  "
                    f"after {row['card_after']}  ({row['seconds']:.0f} s)",
                    flush=True,
                )
                write_json(a.out, {"rows": rows})
    print()
    print(markdown(rows))
    return {"rows": rows}


def label(case: str, reward: str, batch: int, proposal: dict, extra: list[str] = (), family: str = "sd") -> str:
    """The proposal's label as draft plan words it now (a combination keeps its own)."""
    from draft_core.planning.fitting import candidates

    for p in candidates(row_config(case, reward, batch, extra, family)):
        if p.overrides == proposal["set"]:
            return p.label
    return proposal["label"]


def markdown(rows: dict) -> str:
    def card(c):
        return f"{c} GiB" if c else "> 80 GiB"

    lines = [
        "| estimator | reward | batch | settings | predicted peak | weights (base + reward) | activations at peak | "
        "step cost / sampling | smallest card | after fitting |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in rows.items():
        case, reward, batch, *tag = key.split(" | ")
        b = r["breakdown_bytes"]
        after = card(r["card_after"])
        if r.get("proposal"):
            after += (
                f": {label(case, reward, int(batch.removeprefix('batch ')), r['proposal'], r.get('set', []), r.get('family', 'sd'))} "
                f"({r['proposal']['peak_bytes'] / GiB:.1f} GiB, {r['proposal']['cost_ratio']:.2f}x)"
            )
        if (
            r["card_after"] == r["card_before"]
            and r["card_before"] != 24
            and not r.get("proposal")
            and "proposals" not in r
        ):
            after = "not searched"
        lines.append(
            f"| {case} | {reward} | {batch.removeprefix('batch ')} | {tag[0] if tag else 'defaults'} | "
            f"{r['peak_bytes'] / GiB:.1f} GiB | "
            f"{(b['base weights'] + b['reward weights']) / GiB:.1f} GiB | {b['activations'] / GiB:.1f} GiB | "
            f"{r['cost_ratio']:.2f}x | {card(r['card_before'])} | {after} |"
        )
    return "\n".join(lines)


NAMES = {"sd": "SD 1.4 (512 px)", "sdxl": "SDXL", "sd3": "SD3.5-medium", "flux": "FLUX.1-dev"}


def compact(tables: dict) -> str:
    """Estimators by rows, each family at batch 1 and 4 by columns: predicted peak (smallest card;
    after fitting where that differs). Missing rows (a trace that did not finish) are marked."""

    def card(c):
        return f"{c}" if c else "> 80"

    fams = [(next(iter(rows.values())).get("family", "sd") if rows else "?", rows) for rows in tables.values()]
    head = "| estimator | " + " | ".join(f"{NAMES.get(f, f)}, batch {b}" for f, _ in fams for b in (1, 4)) + " |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for case in CASES:
        cells = []
        for _, rows in fams:
            for b in (1, 4):
                r = rows.get(f"{case} | hpsv2 | batch {b}")
                if r is None:
                    cells.append("not traced")
                    continue
                after = f" → {card(r['card_after'])}" if r["card_after"] != r["card_before"] else ""
                cells.append(f"{r['peak_bytes'] / GiB:.1f} GiB ({card(r['card_before'])}{after})")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
