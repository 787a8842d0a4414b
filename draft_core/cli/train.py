"""``draft train``: fine-tune a LoRA on a reward from a config, or resume a run."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from draft_core.errors import DraftError


def _default_run_dir(args: argparse.Namespace) -> Path:
    stem = args.preset or (Path(args.config).stem if args.config else "run")
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_set_arguments(args: argparse.Namespace) -> None:
    """``--set train.lr 1e-3`` (a space for the '='): argparse takes 1e-3 for the CONFIG argument."""
    for text in args.set:
        if "=" not in text:
            value = args.config if args.config and not Path(args.config).exists() else "VALUE"
            raise DraftError(
                f"--set '{text}' has no '=': it is not of the form dotted.key=value. Write --set {text}={value}"
                + (f" ('{value}' was read as the config file)." if value != "VALUE" else ".")
            )


def _check_resume(run_dir: Path, config) -> None:
    """A resumed run keeps its model (the LoRA and optimiser state have its layers' shapes) and needs
    its reward rebuildable from config.yaml."""
    from draft_core.rundir import RunDir
    from draft_core.training.provenance import is_python_reward

    saved = RunDir(run_dir).read_config().model.name  # as the run wrote it, before any --set
    if saved != config.model.name:
        raise DraftError(
            f"--resume {run_dir}: the run was trained on model '{saved}', and its LoRA and optimiser state "
            f"fit that model's layers only; model.name={config.model.name!r} cannot continue it. Drop that --set "
            f"to resume, or start a new run with --out (a LoRA of one model does not apply to another)."
        )
    if is_python_reward(config.reward):
        raise DraftError(
            f"--resume {run_dir}: the run trained on a reward object given from Python ({config.reward['name'][len('python:') :]}), "
            f"which the command line cannot rebuild. Resume it from Python with the same object: "
            f"build_components(load_config('{RunDir(run_dir).config}'), reward=...) and Trainer(...).setup(resume=True) "
            f"(docs/python-api.md)."
        )


def _defaults_block(config) -> str:
    """YAML comments: the plugin arguments left at defaults that YAML cannot hold (the resolved config
    above holds every other argument); empty when there are none."""
    from draft_core.training.components import default_arguments

    lines = [
        f"#   {p.key}: {p.name}: " + ", ".join(f"{k}={v!r}" for k, v in d.items())
        for p, d in default_arguments(config)
        if d
    ]
    return (
        "".join(f"{line}\n" for line in ["# plugin arguments left at defaults that YAML cannot hold:", *lines])
        if lines
        else ""
    )


def train_device_type(config) -> str:
    import torch

    device = config.model.device
    return "cuda" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "cpu"


def cmd_train(args: argparse.Namespace) -> int:
    from draft_core.cli.common import quiet_libraries
    from draft_core.config import load_config
    from draft_core.config.inputs import check_new_run_dir
    from draft_core.lora.card import command_line, record_command
    from draft_core.rewarding.spec import reward_label
    from draft_core.rundir import RunDir
    from draft_core.training.components import build_components, section_label
    from draft_core.training.preflight import check_ready
    from draft_core.training.runlock import RunFolderBusy, check_not_in_use, reuse_unstarted
    from draft_core.training.runner import Trainer

    _check_set_arguments(args)
    if getattr(args, "model", None):  # --model NAME: --set model.name=NAME, before the other overrides
        args.set = [f"model.name={args.model}", *args.set]
    notes: list[str] = []  # plugin arguments a --set SECTION.name=... dropped, printed once the checks pass
    if args.resume:
        if args.config or args.preset or args.out:
            raise DraftError(
                "--resume continues a run in its own folder with its own config.yaml; give --set overrides, "
                "not a config, --preset or --out."
            )
        run = RunDir(args.resume)
        run_dir = run.path
        if not run.config.exists():
            raise DraftError(
                f"--resume {run_dir}: no {run.config.name} there; give the folder of an earlier `draft train` run."
            )
        config = load_config(run.config, args.set, notes=notes)
        _check_resume(run_dir, config)
        if int(os.environ.get("RANK", "0")) == 0:  # the main process holds the lock; the others would see it held
            check_not_in_use(run_dir)
    else:
        if not args.config and not args.preset and not getattr(args, "model", None):
            raise DraftError("draft train needs a CONFIG.yaml or --preset NAME (e.g. draft train --preset quickstart).")
        # Resolved: the model family's sampler unless one is named (euler for flow-matching models).
        config = load_config(args.config, args.set, preset=args.preset, notes=notes)
        run_dir = Path(args.out) if args.out else _default_run_dir(args)
        if not reuse_unstarted(run_dir, empty=not args.dry_run):  # a run stopped before its first step: start it again
            check_new_run_dir(run_dir)
    components = build_components(config)  # every name and argument checked before the model loads
    check_ready(config, components)  # the model and the rewards' weights exist (nothing loaded)
    for note in notes + components.warnings:  # after the checks: a refused config gets its one error paragraph alone
        print(f"[draft] warning: {note}", file=sys.stderr)
    if config.train.memory_budget is not None and not args.no_plan_check and not args.dry_run:
        from draft_core.planning.fitting import check_budget

        check_budget(config, train_device_type(config), progress=lambda m: print(f"[draft] {m}", file=sys.stderr))
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        print(_defaults_block(config), end="")
        return 0
    quiet_libraries()
    trainer = Trainer(config, run_dir, components, progress=not args.no_progress)
    existed = run_dir.exists()
    try:
        trainer.setup(resume=bool(args.resume))
        if trainer.acc.is_main_process:  # the model card shows the command that started the run and each resume
            record_command(run_dir, command_line(args.argv) if getattr(args, "argv", None) else None)
        trainer.log(
            f"{config.model.name} on {trainer.model.device} ({trainer.model.dtype}), LoRA rank {config.lora.rank} "
            f"({sum(p.numel() for p in trainer.params):,} parameters), estimator {section_label(config.estimator)}, "
            f"sampler {section_label(config.sampler)}, reward {reward_label(config.reward)}, run folder {run_dir} (watch it in {run_dir / 'report.html'})"
        )
        t0 = time.perf_counter()
        last = trainer.train()
    except RunFolderBusy:
        raise  # the folder is another process's
    except BaseException:  # an interrupt (SIGINT) before the first step too
        if trainer.run_lock is not None:
            trainer.run_lock.release()
        if not args.resume:
            _remove_if_nothing_done(trainer, run_dir, existed)
        raise
    trainer.log(
        f"done: {trainer.step} steps in {time.perf_counter() - t0:.1f} s; final reward {last.get('reward_mean', float('nan')):.4g}; "
        f"LoRA in {run_dir / 'lora'}, grids in {run_dir / 'samples'}, curve {run_dir / 'reward_curve.png'}, report {run_dir / 'report.html'}"
    )
    return 0


def _remove_if_nothing_done(trainer, run_dir: Path, existed: bool) -> None:
    """A new run that failed or was interrupted before completing a step leaves no folder (or its empty
    folder, when --out named an existing empty one), so the same command can run again. After a step,
    an interrupt checkpoints and --resume continues."""
    import shutil
    import sys

    from draft_core.rundir import RunDir
    from draft_core.training.checkpoint import latest_checkpoint

    if trainer.step > 0 or not run_dir.is_dir() or latest_checkpoint(RunDir(run_dir).checkpoints) is not None:
        return
    acc = getattr(trainer, "acc", None)
    if acc is not None and not acc.is_main_process:
        return
    if existed:
        for child in run_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(
        f"[draft] the run failed before its first step, so {run_dir} was {'emptied' if existed else 'removed'}; "
        f"the same command can run again",
        file=sys.stderr,
    )


def add_parser(sub) -> None:
    from draft_core.cli.helptext import preset_names

    tr = sub.add_parser("train", help="fine-tune a LoRA on a reward")
    tr.add_argument("config", nargs="?", help="a YAML config")
    tr.add_argument("--preset", help=f"a built-in config: {', '.join(preset_names())}")
    tr.add_argument("--model", help="the model to fine-tune (--set model.name=NAME); alone, with the default config")
    tr.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    tr.add_argument("--out", help="run folder (default runs/NAME-TIMESTAMP)")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    tr.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, then exit")
    tr.add_argument(
        "--no-progress", action="store_true", help="no progress bar; a line every train.log_every steps instead"
    )
    tr.add_argument(
        "--no-plan-check", action="store_true", help="train even if the plan predicts more than train.memory_budget"
    )
    tr.set_defaults(func=cmd_train)
