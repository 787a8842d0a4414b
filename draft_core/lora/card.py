"""The model card beside a saved LoRA (``README.md``): how it was made and how to load it."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path
from typing import Sequence

def command_line(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name in ("draft", "cli.py", "__main__.py"):
        argv = ["draft", *argv[1:]]
    return shlex.join(argv)


def _pipeline_class(base: str) -> str:
    """The diffusers pipeline class of the base model's family (Stable Diffusion's when it cannot be told)."""
    from draft_core.models.loading import check_model

    if base == "BASE_MODEL":
        return "StableDiffusionPipeline"
    try:
        return check_model(base).pipeline_classes[0]
    except Exception:  # not cached, offline, a placeholder: the card still gets its usage lines
        return "StableDiffusionPipeline"


def write_model_card(folder: str | Path, info: dict, location: str | Path | None = None, usage: str | None = None,
                     sections: str = "") -> Path:
    """``folder/README.md``: a YAML header (diffusers' model-card fields) and a table of ``info``.

    info keys used: base_model, rewards, estimator, steps, final_reward, command, and any others
    (shown as extra rows). location: where the LoRA will be read from, for the usage lines
    (default ``folder``; a folder filled under a temporary name passes its final path).
    usage: the "Use:" text instead (e.g. for a Hub repository); sections: Markdown appended at the end.
    """
    import yaml

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

    where = Path(location) if location is not None else folder
    if usage is None:
        usage = f"`draft sample --model {base} --lora {where}:1.0 --prompt ...`"
        if base not in EMBEDDED:  # an embedded model is no diffusers pipeline to from_pretrained
            pipeline = _pipeline_class(base)
            usage = (
                f"```python\nfrom diffusers import {pipeline}\n"
                f"pipe = {pipeline}.from_pretrained({base!r})\n"
                f"pipe.load_lora_weights({str(where)!r})\n```\n\nor {usage}"
            )
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
    import yaml

    from draft_core.media import read_metrics

    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = rows[-1]["step"] if rows else 0
    guards = guard_info(rows)
    # Skipped (non-finite) steps log no usable reward: the card reports the others.
    rows = [r for r in rows if isinstance(r.get("reward_mean"), (int, float)) and math.isfinite(r["reward_mean"])]
    reward = cfg.get("reward", {})
    rewards = reward.get("weights") or {k: v for k, v in reward.items() if k != "args"}
    info = {
        "base_model": cfg.get("model", {}).get("name"),
        "rewards": rewards,
        "estimator": cfg.get("estimator"),
        "sampler": cfg.get("sampler"),
        "lora": cfg.get("lora"),
        "steps": steps,
        "final_reward": rows[-1]["reward_mean"] if rows else None,  # the last step's batch mean
        "final_reward_last10": sum(r["reward_mean"] for r in rows[-10:]) / len(rows[-10:]) if rows else None,
        "prompts": cfg.get("prompts", {}).get("source"),
        "command": command or command_line(),
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
