"""Tracker and validation settings are checked with the rest of the config, before anything is
created; trackers start on the main process only. (What they write: tests/test_run_outputs.py.)"""

from __future__ import annotations

import accelerate.utils
import pytest

from draft_core import cli
from draft_core.config import load_config
from draft_core.config.prompts import load_prompts
from draft_core.training.components import build_components
from draft_core.training.tracking import Tracking, flat_config

TINY = ["model.name=tiny-random", "reward.name=jpeg-compressibility", "prompts.source=animals"]


def _train(tmp_path, *sets) -> int:
    return cli.main(
        [
            "train",
            "--preset",
            "quickstart",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            *sum((["--set", s] for s in TINY + list(sets)), []),
        ]
    )


def test_a_tracker_that_is_not_installed_is_named_with_its_package(tmp_path, capsys, monkeypatch, no_model):
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    assert _train(tmp_path, "train.trackers=[wandb]") == 2
    err = capsys.readouterr().err
    assert "train.trackers names wandb" in err and "pip install wandb" in err and "draft-diffusion[trackers]" in err
    assert not (tmp_path / "run").exists()
    assert _train(tmp_path, "train.trackers=[comet]") == 2
    assert "'tensorboard' | 'wandb' | 'mlflow' | 'aim'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "validation,message",
    [
        ("{prompts: [a dog], rewards: [no-such-reward]}", "unknown reward 'no-such-reward'"),
        ("{prompts: [a dog], rewards: [{name: digit-classifier, args: {target: 11}}]}", "target"),
        ("{prompts: [a dog], rewards: [{name: jpeg-compressibility, weight: 2}]}", "'name' and optionally 'args'"),
        (
            "{prompts: [a dog], rewards: [jpeg-compressibility, jpeg-compressibility]}",
            "label 'jpeg-compressibility' is already used",
        ),
        ("{prompts: [], rewards: [jpeg-compressibility]}", "empty list"),
        (
            "{prompts: no-such-file.txt}",
            "train.validation.prompts 'no-such-file.txt' is neither a built-in prompt list",
        ),
        ("{prompts: [a dog], every: -1}", "train.validation.every"),
        ("{prompts: [a dog], n_per_prompt: 0}", "train.validation.n_per_prompt"),
        ("{prompts: [a dog], rewards: jpeg-compressibility}", "train.validation.rewards"),
    ],
)
def test_validation_settings_fail_before_anything_is_created(tmp_path, capsys, no_model, validation, message):
    assert _train(tmp_path, f"train.validation={validation}") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_validation_defaults_to_the_training_reward_and_a_prompt_list_name():
    config = load_config(
        None, TINY + ["train.validation={prompts: animals, every: 5}", "prompts.template=a photo of a {}"]
    )
    c = build_components(config)
    assert (
        list(c.validation.rewards) == ["jpeg-compressibility"]
        and c.validation.rewards["jpeg-compressibility"] is c.reward
    )
    assert c.validation.prompts == [f"a photo of a {p}" for p in load_prompts("animals")] and c.validation.every == 5
    assert build_components(load_config(None, TINY)).validation is None  # off by default
    assert [c.validation.due(s, 12) for s in (0, 1, 5, 7, 10, 12)] == [True, False, True, False, True, True]


def test_only_the_main_process_starts_trackers():
    class Worker:  # what a non-main process's accelerator looks like to Tracking
        log_with, is_main_process, trackers = ["tensorboard"], False, []

        def init_trackers(self, *args, **kwargs):
            raise AssertionError("a tracker was started off the main process")

    tracking = Tracking.start(Worker(), load_config(None, TINY), None, 0, "draft")
    assert tracking.trackers == []
    tracking.log({"step": 1, "reward_mean": 0.5})  # no trackers: nothing to do
    tracking.close()


def test_the_config_becomes_flat_hyperparameters_trackers_accept():
    flat = flat_config(load_config(None, TINY + ["train.ema.decay=0.99"]).to_dict())
    assert flat["train.lr"] == 4e-4 and flat["train.ema.decay"] == 0.99 and flat["model.name"] == "tiny-random"
    assert flat["train.betas"] == "[0.9, 0.999]" and flat["model.revision"] == "null" and flat["train.trackers"] == "[]"
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
