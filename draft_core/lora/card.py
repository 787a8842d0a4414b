"""The model card beside a saved LoRA (``README.md``): how it was made and how to load it."""

from __future__ import annotations

import json
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from draft_core.rundir import COMMANDS as COMMANDS_FILE  # noqa: F401 (COMMANDS_FILE: also importable from here)
from draft_core.rundir import RunDir


def command_line(argv: Sequence[str] | None = None) -> str:
    from draft_core.lora.redact import local_path

    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name in ("draft", "cli.py", "__main__.py"):
        argv = ["draft", *argv[1:]]
    # An absolute --out (or config, or LoRA) under the working or home folder is written relative to it.
    return shlex.join([argv[0], *(local_path(a) if a.startswith("/") else a for a in argv[1:])] if argv else argv)


def record_command(run_dir: str | Path, command: str | None = None) -> None:
    """Append the command that started or resumed the run in ``run_dir`` (default: this process's) to its
    commands.jsonl, so the model card can show every command the run took, not only the last."""
    with open(RunDir(run_dir).commands, "a", encoding="utf-8") as f:
        f.write(json.dumps({"command": command or command_line()}) + "\n")


def run_commands(run_dir: str | Path) -> list[str]:
    """The commands recorded by ``record_command``, first to last (unreadable lines skipped)."""
    path = RunDir(run_dir).commands
    found = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            found.append(str(json.loads(line)["command"]))
        except (ValueError, KeyError, TypeError):
            continue
    return found


def sample_command(base: str, lora: str | Path, sampler: object = None, prompt: str = "...") -> str:
    """``draft sample`` for a trained LoRA, with the steps and guidance the run sampled with (from its
    config.yaml's sampler section), so the command shows what it samples with."""
    parts = ["draft", "sample", "--model", base, "--lora", f"{lora}:1.0"]
    if isinstance(sampler, dict):
        for flag, key in (("--steps", "steps"), ("--guidance", "guidance_scale")):
            if isinstance(sampler.get(key), (int, float)) and not isinstance(sampler.get(key), bool):
                parts += [flag, str(sampler[key])]
    return shlex.join(parts) + f" --prompt {prompt}"


def _diffusers_usage(base: str, where: str) -> str | None:
    """The base model family's own lines for loading the LoRA in diffusers (its ``lora_usage`` hook; Stable
    Diffusion's when the family cannot be told); None where no diffusers pipeline loads the file."""
    from draft_core.models.loading import check_model, family_of_pipeline

    try:
        family = family_of_pipeline(None, base, "sd") if base == "BASE_MODEL" else check_model(base)
    except Exception:  # not cached, offline, a placeholder: the card still gets its usage lines
        family = family_of_pipeline(None, base, "sd")
    return family.lora_usage(base, where)


def write_model_card(
    folder: str | Path, info: dict, location: str | Path | None = None, usage: str | None = None, sections: str = ""
) -> Path:
    """``folder/README.md``: a YAML header (diffusers' model-card fields) and a table of ``info``.

    info keys used: base_model, rewards, estimator, steps, final_reward, command, and any others
    (shown as extra rows). location: where the LoRA will be read from, for the usage lines
    (default ``folder``; a folder filled under a temporary name passes its final path).
    usage: the "Use:" text instead (e.g. for a Hub repository); sections: Markdown appended at the end.
    """
    import yaml

    from draft_core.lora.redact import local_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = info.get("base_model") or "BASE_MODEL"
    header = {
        "base_model": info.get("base_model"),
        "library_name": "diffusers",
        "tags": ["lora", "text-to-image", "draft", "diffusers"],
    }
    rows = "\n".join(f"| {k} | {_cell(v)} |" for k, v in info.items() if k != "command")
    from draft_core.models.loading import EMBEDDED

    where = local_path(location if location is not None else folder)  # no absolute path where a relative one does
    if usage is None:
        usage = f"`{sample_command(base, where, info.get('sampler'))}`"
        lines = None if base in EMBEDDED else _diffusers_usage(base, str(where))  # embedded: no diffusers pipeline
        if lines:
            usage = f"```python\n{lines}\n```\n\nor {usage}"
    text = (
        f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n"
        f"# DRaFT LoRA for {base}\n\n"
        "A LoRA fine-tuned with draft (Directly Fine-Tuning Diffusion Models on Differentiable Rewards).\n\n"
        f"| field | value |\n| --- | --- |\n{rows}\n\n"
        f"Made by:\n\n```bash\n{info.get('command', '(unknown)')}\n```\n\nUse:\n\n{usage}\n"
        + (f"\n{sections.strip()}\n" if sections.strip() else "")
    )
    path = folder / "README.md"
    path.write_text(text)
    return path


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def run_card_info(run_dir: str | Path, command: str | None = None) -> dict:
    """What a training run's model card says, from its config.yaml and metrics.jsonl."""
    import dataclasses

    from draft_core.media import read_metrics

    run = RunDir(run_dir)
    cfg = run.read_config() if run.has_config() else None
    rows = read_metrics(run.metrics)
    steps = rows[-1]["step"] if rows else 0
    guards = guard_info(rows)
    # Skipped (non-finite) steps log no usable reward: the card reports the others.
    rows = [r for r in rows if isinstance(r.get("reward_mean"), (int, float)) and math.isfinite(r["reward_mean"])]
    from draft_core.rewarding.spec import reward_label

    info = {
        "base_model": cfg.model.name if cfg else None,
        "rewards": reward_label(cfg.reward) if cfg and cfg.reward else None,
        "estimator": cfg.estimator if cfg else None,
        "sampler": cfg.sampler if cfg else None,
        "lora": dataclasses.asdict(cfg.lora) if cfg else None,
        "steps": steps,
        "final_reward": rows[-1]["reward_mean"] if rows else None,  # the last step's batch mean
        "final_reward_last10": sum(r["reward_mean"] for r in rows[-10:]) / len(rows[-10:]) if rows else None,
        "prompts": cfg.prompts.source if cfg else None,
        # The command that started the run, then each resume's (one per line).
        "command": command or "\n".join(run_commands(run.path)) or command_line(),
        **guards,
    }
    return info


def guard_info(rows: list[dict]) -> dict:
    """The guards' part of a card (draft_core.training.guards): why the run stopped, its best validation step."""
    info = {}
    stop = next((r for r in reversed(rows) if r.get("guard_stop")), None)
    if stop:
        info["stopped_by"] = f"train.stop_when at step {stop['step']}: {stop['guard_stop']}"
    best = next((r["step"] for r in reversed(rows) if r.get("guard_best")), None)
    if best is not None:
        info["best_validation_step"] = f"{best} (its LoRA: lora/best/)"
    return info
