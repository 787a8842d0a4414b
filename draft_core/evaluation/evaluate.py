"""Evaluation: sample held-out prompts with each model/LoRA/method configuration, score with several
rewards, and tabulate mean ± standard error per prompt category (the paper's Table 2).

Prompt sets: a built-in list (``animals``, ``digits``; its name is the category), a text file
(one prompt per line, optionally ``category<TAB>prompt``; otherwise the file's stem is the
category), a JSON file (an array of strings, category = stem), or a folder holding the HPDv2
benchmark files ``anime.json``, ``concept-art.json``, ``paintings.json``, ``photo.json``
(directly or in ``benchmark/``, as ``$HPS_ROOT/datasets/benchmark/`` has them).

Determinism: sample j of prompt i starts from a generator seeded with a hash of (seed, i, j),
so a row's images do not depend on batch size or on the other rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from draft_core.config.prompts import BUILTIN, load_prompts, read_prompt_file
from draft_core.errors import ConfigError
from draft_core.evaluation.baselines import Method, NoiseSource
from draft_core.lora import LoraSpec, adapters_enabled

HPDV2_STYLES = ("anime", "concept-art", "paintings", "photo")


@dataclass(frozen=True)
class PromptItem:
    category: str
    prompt: str


def _read_json_prompts(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"prompt file '{path}' is not valid JSON ({exc}); HPDv2 benchmark files are a JSON array of strings."
        ) from exc
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise ConfigError(
            f"prompt file '{path}' must hold a JSON array of strings (the HPDv2 benchmark format), got {type(data).__name__}."
        )
    return data


def load_prompt_set(source: str, per_category: int | None = None) -> list[PromptItem]:
    """The prompts of ``source`` in file order, grouped by category; ``per_category`` keeps the first K of each."""
    path = Path(source).expanduser()
    if source in BUILTIN:  # as prompts.load_prompts: a built-in name wins over a file of that name
        items = [PromptItem(source, p) for p in load_prompts(source)]
    elif path.is_dir():
        folder = path / "benchmark" if not any((path / f"{s}.json").exists() for s in HPDV2_STYLES) else path
        files = [folder / f"{s}.json" for s in HPDV2_STYLES if (folder / f"{s}.json").is_file()]
        if not files:
            raise ConfigError(
                f"--prompts '{source}' is a folder without the HPDv2 benchmark files "
                f"({', '.join(s + '.json' for s in HPDV2_STYLES)}), in it or in its benchmark/ subfolder."
            )
        items = [PromptItem(f.stem, p) for f in files for p in _read_json_prompts(f)]
    elif path.is_file() and path.suffix == ".json":
        items = [PromptItem(path.stem, p) for p in _read_json_prompts(path)]
    elif path.is_file():
        items = []
        for line in read_prompt_file(path):
            category, tab, prompt = line.partition("\t")
            items.append(PromptItem(category.strip(), prompt.strip()) if tab else PromptItem(path.stem, line))
    else:
        raise ConfigError(
            f"--prompts '{source}' is not a built-in prompt list ({', '.join(sorted(BUILTIN))}), a text file "
            f"(one prompt per line, optionally category<TAB>prompt), a JSON array file, or a folder with the "
            f"HPDv2 benchmark files."
        )
    if not items:
        raise ConfigError(f"--prompts '{source}' holds no prompts.")
    if per_category is not None:
        if per_category < 1:
            raise ConfigError(f"--prompts-per-category must be a positive integer, got {per_category}.")
        seen: dict[str, int] = {}
        kept = []
        for item in items:
            seen[item.category] = seen.get(item.category, 0) + 1
            if seen[item.category] <= per_category:
                kept.append(item)
        items = kept
    return items


def item_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class RowSpec:
    """One row of the table: LoRAs applied (empty: the base model) and a generation method."""

    loras: list[LoraSpec]
    method: Method
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            what = " + ".join(f"{s.path}:{s.scale:g}" for s in self.loras) if self.loras else "base"
            self.label = what if self.method.label == "plain" else f"{what}, {self.method.label}"


@dataclass
class RowResult:
    label: str
    method: str
    loras: list[str]
    scores: dict[str, list[float]]  # reward label -> one score per sample, in sample order
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalResult:
    items: list[PromptItem]
    n_per_prompt: int
    seed: int
    rewards: list[str]
    rows: list[RowResult]
    sheet: torch.Tensor | None = None  # [rows * columns, 3, H, W]
    sheet_columns: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(item.category for item in self.items))

    def samples(self) -> list[tuple[int, int]]:
        """(prompt index, sample index) of every sample, in the order of a row's scores."""
        return [(i, j) for i in range(len(self.items)) for j in range(self.n_per_prompt)]

    def stats(self, row: RowResult, reward: str, category: str | None) -> tuple[float, float, int]:
        """(mean, standard error, n) of a row's scores for one reward, over one category or all."""
        values = [
            s
            for (i, _), s in zip(self.samples(), row.scores[reward])
            if category is None or self.items[i].category == category
        ]
        t = torch.tensor(values, dtype=torch.float64)
        se = (t.std(unbiased=True) / math.sqrt(len(values))).item() if len(values) > 1 else float("nan")
        return t.mean().item(), se, len(values)

    def columns(self) -> list[tuple[str, str | None]]:
        cats = self.categories
        per_reward: list[str | None] = [*cats, *([None] if len(cats) > 1 else [])]
        return [(r, c) for r in self.rewards for c in per_reward]


def _column_name(reward: str, category: str | None, n_rewards: int) -> str:
    cat = category if category is not None else "all"
    return cat if n_rewards == 1 else f"{reward}: {cat}"


def to_markdown(result: EvalResult) -> str:
    """One row per configuration, one column per (reward, category): mean ± standard error."""
    cols = result.columns()
    head = ["configuration", *(_column_name(r, c, len(result.rewards)) for r, c in cols), "s / image"]
    n_images = len(result.items) * result.n_per_prompt
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |"]
    for row in result.rows:
        cells = []
        for r, c in cols:
            mean, se, _ = result.stats(row, r, c)
            cells.append(f"{mean:.4g} ± {se:.2g}")
        lines.append("| " + " | ".join([row.label, *cells, f"{row.seconds / n_images:.3g}"]) + " |")
    reward_note = result.rewards[0] if len(result.rewards) == 1 else "each reward"
    lines.append("")
    lines.append(
        f"Mean ± standard error of {reward_note} over {result.n_per_prompt} sample(s) for each of "
        f"{len(result.items)} prompt(s); seed {result.seed}."
    )
    return "\n".join(lines)


def to_records(result: EvalResult) -> list[dict[str, Any]]:
    records = []
    for row in result.rows:
        for r, c in result.columns():
            mean, se, n = result.stats(row, r, c)
            records.append(
                {
                    "configuration": row.label,
                    "method": row.method,
                    "loras": " ".join(row.loras),
                    "reward": r,
                    "category": c if c is not None else "all",
                    "n": n,
                    "mean": mean,
                    "se": se,
                    "seconds_per_image": row.seconds / (len(result.items) * result.n_per_prompt),
                }
            )
    return records


def to_json(result: EvalResult) -> dict[str, Any]:
    return {
        **result.settings,
        "seed": result.seed,
        "n_per_prompt": result.n_per_prompt,
        "rewards": result.rewards,
        "prompts": [{"category": it.category, "prompt": it.prompt} for it in result.items],
        "table": to_records(result),
        "rows": [
            {
                "configuration": row.label,
                "method": row.method,
                "loras": row.loras,
                "seconds": row.seconds,
                "scores": row.scores,
                **row.info,
            }
            for row in result.rows
        ],
    }


def write_outputs(result: EvalResult, out: Path) -> dict[str, Path]:
    """table.md, table.csv, results.json and contact_sheet.png in ``out``."""
    from draft_core.media import generation_params, save_grid

    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "table.md", "csv": out / "table.csv", "json": out / "results.json"}
    paths["markdown"].write_text(to_markdown(result) + "\n")
    records = to_records(result)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    paths["json"].write_text(json.dumps(to_json(result), indent=2))
    if result.sheet is not None:  # a row per configuration, a column per prompt (its first sample)
        prompts = [result.items[i].prompt for i in sheet_prompts(result.items, result.sheet_columns)]
        s = result.settings
        params = generation_params(
            prompts,
            model=s.get("model", "?"),
            sampler=s.get("sampler_name", s.get("sampler", "?")),
            steps=s.get("steps"),
            guidance=s.get("guidance"),
            seed=result.seed,
            configurations=[row.label for row in result.rows],
        )
        paths["sheet"] = save_grid(
            result.sheet,
            out / "contact_sheet.png",
            nrow=result.sheet_columns,
            rows=[r.label for r in result.rows],
            cols=prompts,
            title=f"draft eval, seed {result.seed}: the first sample of each prompt",
            params=params,
        )
    return paths


def sheet_prompts(items: Sequence[PromptItem], count: int) -> list[int]:
    """Up to ``count`` prompt indices, taken round-robin across categories (the first of each, then the second...)."""
    by_cat: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_cat.setdefault(item.category, []).append(i)
    picked: list[int] = []
    depth = 0
    while len(picked) < min(count, len(items)):
        for idx in by_cat.values():
            if depth < len(idx) and len(picked) < count:
                picked.append(idx[depth])
        depth += 1
    return sorted(picked)


def evaluate(
    model,
    sampler,
    rows: Sequence[RowSpec],
    items: Sequence[PromptItem],
    rewards: dict[str, Callable],
    *,
    n_per_prompt: int,
    seed: int,
    batch_size: int = 8,
    lora_steps: tuple[int, int] | None = None,
    sheet_columns: int = 8,
    progress: Callable[[str], None] | None = None,
    learned=None,
) -> EvalResult:
    """Run every row over every (prompt, sample) and score each image with every reward.

    Rows with LoRAs expect them loaded as the model's active adapters (``apply_loras``); rows
    without run with the adapters disabled. ``learned``: sampler hyperparameters learned with
    the LoRAs (``draft_core.training.learned_sampling.LearnedSampling``), used by the rows with LoRAs
    only. Rewards are called without gradient.
    """
    if n_per_prompt < 1 or batch_size < 1:
        raise ConfigError(
            f"--n-per-prompt and --batch-size must be positive integers, got {n_per_prompt} and {batch_size}."
        )
    samples = [(i, j) for i in range(len(items)) for j in range(n_per_prompt)]
    sheet_idx = {(i, 0): k for k, i in enumerate(sheet_prompts(items, sheet_columns))}
    sheet: list[torch.Tensor] = []
    results = []
    # One untimed image first, so that lazy set-up (weights, caches) is not charged to the first row.
    Method().generate(model, sampler, [items[0].prompt], NoiseSource.per_item(model, [0]), lora_steps=lora_steps)
    for reward in rewards.values():
        with torch.no_grad():
            reward(torch.full((1, 3, *model.image_size), 0.5, device=model.device), [items[0].prompt])
    for row in rows:
        use = learned if row.loras else None
        sampler.guidance_schedule = use.guidance if use is not None else None
        row.method.condition = use.condition if use is not None else None
        scores: dict[str, list[float]] = {name: [] for name in rewards}
        row_sheet: dict[int, torch.Tensor] = {}
        info: dict[str, list] = {}
        t0 = time.perf_counter()
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            prompts = [items[i].prompt for i, _ in batch]
            noise = NoiseSource.per_item(model, [item_seed(seed, i, j) for i, j in batch])
            generator = torch.Generator().manual_seed(item_seed(seed, *batch[0]) ^ 0x5EED)  # stochastic samplers' steps
            with adapters_enabled(model.denoiser, bool(row.loras)):
                out = row.method.generate(model, sampler, prompts, noise, lora_steps=lora_steps, generator=generator)
            with torch.no_grad():
                for name, reward in rewards.items():
                    scores[name] += reward(out.images, prompts).float().cpu().tolist()
            for k, key in enumerate(batch):
                if key in sheet_idx:
                    row_sheet[sheet_idx[key]] = out.images[k].detach().float().cpu()
            if "reward_history" in out.info:  # DOODL: mean reward before each update
                info.setdefault("doodl_reward_history", []).append(out.info["reward_history"].mean(dim=1).tolist())
            if progress:
                progress(f"{row.label}: {min(start + batch_size, len(samples))}/{len(samples)}")
        seconds = time.perf_counter() - t0
        sheet += [row_sheet[k] for k in sorted(row_sheet)]
        results.append(
            RowResult(row.label, row.method.label, [f"{s.path}:{s.scale:g}" for s in row.loras], scores, seconds, info)
        )
    return EvalResult(
        list(items),
        n_per_prompt,
        seed,
        list(rewards),
        results,
        sheet=torch.stack(sheet) if sheet else None,
        sheet_columns=len(sheet_idx),
    )
