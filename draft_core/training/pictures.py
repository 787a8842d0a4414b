"""The pictures a run draws while it trains (main process only; every process under a sharded base, only
the main one writing): the grid of fixed prompts and
noise at step 0, every ``train.sample_every`` steps and at the end; the validation grids; and
before/after. Each is labelled (a row per prompt, a column per sample), carries its generation
parameters in the PNG, and goes to the experiment trackers too; each new grid or validation
rewrites the run's report page (draft_core.report).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from draft_core.lora.redact import local_path
from draft_core.media import generation_params, save_before_after, save_grid
from draft_core.report import refresh_report
from draft_core.rundir import RunDir


@torch.no_grad()
def generate(
    model: Any,
    sampler: Any,
    condition: Callable[[Any], Any],
    prompts: list[str],
    noise: torch.Tensor,
    generator: torch.Generator,
    batch_size: int = 8,
) -> torch.Tensor:
    """Images for ``prompts`` from ``noise`` ([N, C, h, w]), ``batch_size`` at a time: [N, 3, H, W] in [0, 1], on the CPU."""
    images = []
    for i in range(0, len(prompts), batch_size):
        cond = condition(model.encode_prompts(prompts[i : i + batch_size]))
        images.append(
            model.decode(sampler.sample(model, cond, noise[i : i + batch_size], generator=generator)).float().cpu()
        )
    return torch.cat(images)


class RunPictures:
    """``components``: the run's ``Components`` (sampler, prompts, validation); ``condition``:
    rewrites encoded prompts as training does (a learned negative prompt)."""

    def __init__(
        self,
        config: Any,
        run_dir: Path,
        model: Any,
        components: Any,
        condition: Callable[[Any], Any],
        learned: Any = None,
    ) -> None:
        self.run = RunDir(run_dir)
        self.config, self.run_dir, self.model, self.c = config, Path(run_dir), model, components
        self.condition, self.learned = condition, learned
        self.write = True  # false: draw, but write nothing (the other processes of a sharded base: training/fsdp.py)

    def params(self, prompts: list[str], seed: int, step: int) -> dict[str, Any]:
        """The generation parameters of a grid drawn at ``step`` (stored in its PNG)."""
        cfg, sampler = self.config, self.c.sampler
        learned = [
            n
            for n, on in (
                ("guidance schedule", getattr(self.learned, "guidance", None)),
                ("negative prompt", getattr(self.learned, "negative", None)),
            )
            if on is not None
        ]
        return generation_params(
            prompts,
            model=cfg.model.name,
            sampler=cfg.sampler["name"],
            steps=sampler.num_steps,
            guidance=sampler.guidance_scale
            if sampler.guidance_scale is not None
            else cfg.sampler.get("guidance_scale", 0.0),
            seed=seed,
            size=self.model.image_size,
            loras=[(local_path(self.run.lora), 1.0)] if step > 0 else [],
            step=step,
            learned=", ".join(learned) or None,
        )

    def grid(self, tag: str, step: int, tracking: Any) -> Path | None:
        """``samples/<tag>.png``: the fixed prompts (``train.sample_prompts``), ``sample_per_prompt`` each, same noise every time."""
        t = self.config.train
        base = t.sample_prompts or self.c.prompts[:10]
        prompts = [p for p in base for _ in range(t.sample_per_prompt)]  # one row per prompt
        gen = torch.Generator().manual_seed(t.seed)  # the same noise in every grid
        images = generate(
            self.model, self.c.sampler, self.condition, prompts, self.model.make_noise(len(prompts), gen), gen
        )
        if not self.write:
            return None
        path = save_grid(
            images,
            self.run.samples / f"{tag}.png",
            nrow=t.sample_per_prompt,
            rows=base,
            cols=[f"sample {j + 1}" for j in range(t.sample_per_prompt)],
            title=f"step {step}",
            params=self.params(base, t.seed, step),
        )
        tracking.image("samples", path, step)
        refresh_report(self.run_dir)  # report.html shows every grid: rewritten with each new one
        return path

    def validate(self, step: int, tracking: Any) -> dict[str, float]:
        """``val/<reward>`` means, and ``samples/val-step-NNNNNN.png``, when validation is due at ``step``; else {}."""
        v = self.c.validation
        if v is None or not v.due(step, self.config.train.steps):
            return {}
        scores, images = v.run(self.model, self.c.sampler, self.condition)
        if not self.write:
            return {}
        title = f"validation at step {step}: " + ", ".join(f"{k[len('val/') :]} {s:.4g}" for k, s in scores.items())
        params = {
            **self.params(v.prompts, v.seed, step),
            "seeding": "per image: a hash of (seed, prompt index, image index)",
        }
        path = save_grid(
            images,
            self.run.samples / f"val-step-{step:06d}.png",
            nrow=v.n_per_prompt,
            rows=v.prompts,
            cols=[f"seed {j + 1}" for j in range(v.n_per_prompt)],
            title=title,
            params=params,
        )
        tracking.image("validation", path, step)
        refresh_report(self.run_dir, pending={"step": step, **scores})  # this step's row is written after
        return dict(scores)

    def before_after(self, final: Path, step: int, tracking: Any) -> Path | None:
        """``samples/before_after.png`` from step 0's grid and ``final`` (None without step 0's grid)."""
        first = self.run.samples / "step-000000.png"
        if not first.exists():
            return None
        path = save_before_after(
            first, final, self.run.samples / "before_after.png", ("before: step 0", f"after: step {step}")
        )
        tracking.image("before_after", path, step)
        return path
