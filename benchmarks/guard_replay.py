"""The guards of a config replayed over another run's checkpoints: what ``train.stop_when`` and
``train.best_metric`` would have decided, had that run validated as the config does.

    python benchmarks/guard_replay.py RUN [--preset quickstart-guarded] [--out FILE] [--known EARLIER_OUT]

Validation draws from none of the training's random streams, so a run with validation trains the
same LoRA as one without (``tests/test_run_outputs.py`` checks it bit for bit): loading RUN's
checkpoint of step S and validating gives the row the guarded run logs at step S. For each
checkpoint whose step is a validation step (and step 0, the LoRA before any update), this script
runs the config's validation (its prompts, seeds and rewards) and feeds RUN's metrics rows, with
those scores merged in, through the config's guards. It prints one line per validation and the
stop and best steps, and writes them as JSON. A replay, not a run: use it where the guarded run
itself cannot be afforded (a loaded machine), and say so.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from draft_core.config import load_config
from draft_core.lora import add_lora, load_lora_state
from draft_core.media import read_metrics
from draft_core.models.loading import load_model
from draft_core.training.components import build_components
from draft_core.training.guards import build_guards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run folder with checkpoints (train.keep_checkpoints large enough)")
    ap.add_argument("--preset", default="quickstart-guarded", help="the config whose validation and guards to replay")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--known", type=Path, default=None, help="an earlier --out: its validation scores are reused, not recomputed"
    )
    args = ap.parse_args()
    known = {r["step"]: r for r in json.loads(args.known.read_text())["validations"]} if args.known else {}
    config = load_config(preset=args.preset)
    c = build_components(config)
    v, guards = c.validation, build_guards(config)
    model = load_model(config.model.name, torch.device("cpu"), torch.float32)
    torch.manual_seed(config.train.seed)
    add_lora(model, config.lora.rank, config.lora.alpha, config.lora.targets)
    steps = sorted(
        int(m.group(1)) for p in (args.run / "checkpoints").glob("step-*") if (m := re.fullmatch(r"step-(\d+)", p.name))
    )
    due = [0] + [s for s in steps if v.due(s, config.train.steps)]
    rows = {r["step"]: r for r in read_metrics(args.run / "metrics.jsonl")}
    out = []
    for step in due:
        if step in known:
            scores = {k: x for k, x in known[step].items() if k.startswith("val/")}
        else:
            if step:
                load_lora_state(model, load_file(args.run / "checkpoints" / f"step-{step:06d}" / "lora.safetensors"))
            scores, _ = v.run(model, c.sampler, lambda cond: cond)
        # the training rows since the last validation first (the gap rule reads them), then this one
        for s in sorted(k for k in rows if (out[-1]["step"] if out else 0) < k < step):
            guards.observe(rows[s])
        row = {**rows.get(step, {"step": step}), **scores}
        verdict = guards.note(row)
        out.append({"step": step, **scores, "stop": verdict.stop, "best": verdict.best})
        print(json.dumps(out[-1]), flush=True)
        if verdict.stop:
            break
    summary = {
        "run": str(args.run),
        "preset": args.preset,
        "validations": out,
        "stopped": guards.stopped,
        "best_step": guards.best_step,
        "best_metric": guards.best_metric,
        "best_value": guards.best_value,
    }
    print(f"stopped: {guards.stopped}; best: step {guards.best_step} ({guards.best_metric} {guards.best_value})")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
