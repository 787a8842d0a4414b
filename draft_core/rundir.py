"""The run folder's layout: where a training run keeps each thing it writes, by name.

``draft train --out RUN`` writes::

    RUN/config.yaml          the resolved config (``RunDir.read_config()``: the schema's Config)
    RUN/metrics.jsonl        one row per step (and step 0's validation)
    RUN/commands.jsonl       the command that started the run, then each resume's
    RUN/checkpoints/         step-N/ folders and ``latest`` (training/checkpoint.py)
    RUN/lora/                the LoRA (diffusers format) and its model card; lora/best/ with train.stop_when
    RUN/lora_ema/            the weight average's LoRA (train.ema.decay)
    RUN/samples/             step-N.png grids, val-step-N.png, before_after.png
    RUN/report.html          the report page
    RUN/reward_curve.png, RUN/guidance_schedule.png
    RUN/prompt_cache/        encoded prompts (model.offload_text_encoders)
    RUN/.draft-lock          held by the run writing the folder

Everything that reads or writes a run folder takes its paths from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from draft_core.config.schema import Config

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
COMMANDS = "commands.jsonl"
CHECKPOINTS = "checkpoints"
LORA = "lora"
BEST = "best"  # lora/best/
LORA_EMA = "lora_ema"
SAMPLES = "samples"
REPORT = "report.html"
REWARD_CURVE = "reward_curve.png"
GUIDANCE_PLOT = "guidance_schedule.png"
PROMPT_CACHE = "prompt_cache"
LOCK = ".draft-lock"


@dataclass(frozen=True)
class RunDir:
    """A run folder (it need not exist yet)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def commands(self) -> Path:
        return self.path / COMMANDS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def lora(self) -> Path:
        return self.path / LORA

    @property
    def lora_best(self) -> Path:
        return self.path / LORA / BEST

    @property
    def lora_ema(self) -> Path:
        return self.path / LORA_EMA

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    @property
    def report(self) -> Path:
        return self.path / REPORT

    @property
    def reward_curve(self) -> Path:
        return self.path / REWARD_CURVE

    @property
    def guidance_plot(self) -> Path:
        return self.path / GUIDANCE_PLOT

    @property
    def prompt_cache(self) -> Path:
        return self.path / PROMPT_CACHE

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    def has_config(self) -> bool:
        return self.config.is_file()

    def read_config(self) -> Config:
        """The run's config.yaml as the schema's Config, checked as ``draft train`` checks one (its plugin
        sections as written: they are not resolved against the plugins installed now)."""
        from draft_core.config.schema import parse_config

        return parse_config(self.config)
