"""The Python API (draft_core.api): the example in docs/python-api.md runs as written, a reward object
given from Python is what the run records, and api.sample makes the images `draft sample` makes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
import yaml

import draft_core.api as api
from draft_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHORT = [
    "sampler.steps=2",
    "train.steps=1",
    "train.batch_size=1",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat]",
]


class Darkness:
    def __call__(self, images, prompts):
        return -images.mean(dim=(1, 2, 3))


def test_the_supported_entry_points_are_exported():
    for name in ("load_config", "build_components", "Trainer", "train", "load_model", "sample", "score"):
        assert name in api.__all__ and callable(getattr(api, name)), name


def test_the_documented_example_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "python-api.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "python-api.md", "exec"), {"__name__": "python_api_example"})
    out = capsys.readouterr().out
    assert "torch.Size([4, 3, 64, 64])" in out and "step 3 reward" in out
    run = tmp_path / "runs" / "bright"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["reward"]["name"] == "python:python_api_example.Brightness" and config["train"]["steps"] == 3
    assert "python:python_api_example.Brightness" in (run / "lora" / "README.md").read_text()
    # The command line cannot rebuild a Python object, and says so instead of training on something else.
    assert main(["train", "--resume", str(run), "--set", "train.steps=4"]) == 2
    err = capsys.readouterr().err
    assert "python_api_example.Brightness" in err and "from Python" in err and "Traceback" not in err


def test_a_reward_replaced_on_the_components_is_what_the_run_records(tmp_path):
    """The notebook way: build from the config, then swap the reward object before training."""
    config = api.load_config(overrides=SHORT)
    components = api.build_components(config)
    components.reward = Darkness()
    trainer = api.Trainer(config, tmp_path / "run", components, progress=False)
    trainer.setup()
    trainer.train()
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["reward"]
    assert recorded["name"] == f"python:{__name__}.Darkness", recorded
    card = (tmp_path / "run" / "lora" / "README.md").read_text()
    assert "Darkness" in card and "jpeg-compressibility" not in card


def test_sample_makes_the_images_draft_sample_makes(tmp_path, capsys):
    argv = [
        "--model",
        "tiny-random",
        "--prompt",
        "a cat",
        "--prompt",
        "a dog",
        "--n",
        "2",
        "--steps",
        "2",
        "--seed",
        "3",
    ]
    assert main(["sample", *argv, "--batch-size", "3", "--save-tensor", "--out", str(tmp_path / "s")]) == 0
    cli_images = torch.load(tmp_path / "s" / "images.pt", weights_only=True)
    images = api.sample("tiny-random", ["a cat", "a dog"], n=2, steps=2, seed=3, batch_size=3)
    assert torch.equal(images, cli_images)
    scores = api.score("jpeg-compressibility", images)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
