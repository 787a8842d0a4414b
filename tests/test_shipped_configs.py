"""Every config and preset the project ships validates and resolves its plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

from draft_core.config import PRESETS_DIR, load_config
from draft_core.training.components import build_components

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path):
    build_components(load_config(path))


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
def test_presets_validate(name):
    config = load_config(preset=name)
    build_components(config)
    assert config.model.name in ("tiny-random",) or Path(config.model.name).exists() or "/" not in config.model.name


def test_quickstart_runs_on_the_embedded_model(tmp_path):
    """The README's main job, shortened: 2 steps of 3 sampling steps on `digits`."""
    from draft_core.cli import main

    out = tmp_path / "qs"
    sets = ["train.steps=2", "sampler.steps=3", "train.sample_every=0", "train.sample_per_prompt=1"]
    assert (
        main(
            [
                "train",
                "--preset",
                "quickstart",
                "--out",
                str(out),
                "--no-progress",
                *sum((["--set", s] for s in sets), []),
            ]
        )
        == 0
    )
    assert load_config(out / "config.yaml").model.name == "digits"
    assert (out / "samples" / "before_after.png").exists() and (
        out / "lora" / "pytorch_lora_weights.safetensors"
    ).exists()
