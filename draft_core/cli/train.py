"""``draft train``: fine-tune a LoRA on a reward from a config, or resume a run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from draft_core.errors import DraftError


def _default_run_dir(args: argparse.Namespace) -> Path:
    stem = args.preset or (Path(args.config).stem if args.config else "run")
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args: argparse.Namespace) -> int:
    from draft_core.cli.common import quiet_libraries
    from draft_core.config import load_config
    from draft_core.config.inputs import check_new_run_dir
    from draft_core.training.components import build_components
    from draft_core.training.runner import Trainer

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
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    quiet_libraries()
    trainer = Trainer(config, run_dir, components, progress=not args.no_progress)
    trainer.setup(resume=bool(args.resume))
    trainer.log(
        f"{config.model.name} on {trainer.model.device} ({trainer.model.dtype}), LoRA rank {config.lora.rank} "
        f"({sum(p.numel() for p in trainer.params):,} parameters), estimator {components.estimator!r}, "
        f"sampler {components.sampler!r}, run folder {run_dir} (watch it in {run_dir / 'report.html'})"
    )
    t0 = time.perf_counter()
    last = trainer.train()
    trainer.log(
        f"done: {trainer.step} steps in {time.perf_counter() - t0:.1f} s; final reward {last.get('reward_mean', float('nan')):.4g}; "
        f"LoRA in {run_dir / 'lora'}, grids in {run_dir / 'samples'}, curve {run_dir / 'reward_curve.png'}, report {run_dir / 'report.html'}"
    )
    return 0


def add_parser(sub) -> None:
    tr = sub.add_parser("train", help="fine-tune a LoRA on a reward")
    tr.add_argument("config", nargs="?", help="a YAML config")
    tr.add_argument("--preset", help="a built-in config (quickstart)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    tr.add_argument("--out", help="run folder (default runs/NAME-TIMESTAMP)")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    tr.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, then exit")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)
