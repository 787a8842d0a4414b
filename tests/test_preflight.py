"""What can be checked before a run starts is checked then, in --dry-run too: the reward's weights
(each reward's optional check_available()), the model (present, a supported pipeline class); and a
run that fails before its first step leaves no folder, so the same command can run again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reward_models import TINY_OPEN_CLIP, save_tiny_hps

from draft_core import cli, hookimpl
from draft_core.errors import ModelLoadError
from draft_core.plugins import discovery, load_registry
from draft_rewards.aesthetic import Aesthetic
from draft_rewards.clip_score import ClipScore
from draft_rewards.hpsv2 import HPSv2

FAST = [
    "model.name=tiny-random",
    "sampler.steps=2",
    "estimator.name=draft-k",
    "estimator.k=1",
    "train.batch_size=1",
    "train.sample_every=0",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat]",
    "lora.rank=2",
]


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def train_error(capsys, *argv: str) -> str:
    """The one-paragraph error (after any [draft] progress lines) of a `draft train` that exits 2."""
    code = cli.main(["train", "--preset", "quickstart", *argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith("[draft]")]
    assert code == 2 and "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), (out, err)
    return lines[0]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty hub cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.mark.parametrize(
    "reward, expected",
    [
        (["reward.name=aesthetic"], "trl-lib/ddpo-aesthetic-predictor"),
        (["reward.name=aesthetic", "reward.path=/nowhere/head.pth"], "/nowhere/head.pth"),
        (["reward.name=hpsv2"], "xswu/HPSv2"),
        (["reward.name=pickscore"], "yuvalkirstain/PickScore_v1"),
        (["reward={weights: {jpeg-compressibility: 1, hpsv2: 2}}"], "HPS_v2_compressed.pt"),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False])
def test_missing_reward_weights_are_found_before_anything(
    capsys, offline, no_model, tmp_path, monkeypatch, reward, expected, dry_run
):
    monkeypatch.chdir(tmp_path)
    err = train_error(capsys, *sets(*reward), "--out", "run", *(["--dry-run"] if dry_run else []))
    assert expected in err
    assert not (tmp_path / "run").exists()


def test_missing_or_unsupported_models_are_found_in_dry_run(capsys, offline, no_model, tmp_path):
    assert "Did you mean" not in train_error(capsys, "--dry-run", *sets("model.name=draft-tests/no-such-model"))
    other = tmp_path / "kandinsky"  # a diffusers pipeline no registered family loads
    (other / "unet").mkdir(parents=True)
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    err = train_error(capsys, "--dry-run", *sets(f"model.name={other}"))
    assert (
        "KandinskyV22Pipeline" in err and "no registered model family loads" in err and "StableDiffusionPipeline" in err
    )


def test_an_unsupported_folder_is_refused_before_it_loads(capsys, tmp_path):
    other = tmp_path / "kandinsky"
    (other / "unet").mkdir(parents=True)
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    assert cli.main(["sample", "--model", str(other), "--prompt", "a cat", "--out", str(tmp_path / "o")]) == 2
    assert "KandinskyV22Pipeline" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_check_available_of_the_learned_rewards(offline, tmp_path):
    HPSv2(path=str(save_tiny_hps(tmp_path / "hps.pt")), arch=TINY_OPEN_CLIP).check_available()  # found: no error
    with pytest.raises(ModelLoadError, match="HPS_v2.1_compressed.pt"):
        HPSv2(version="2.1").check_available()
    with pytest.raises(ModelLoadError, match="does not exist"):
        ClipScore(model=str(tmp_path / "no-such-folder")).check_available()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        ClipScore(model=str(tmp_path / "empty")).check_available()
    with pytest.raises(ModelLoadError, match="clip_model"):  # the head is there, the CLIP model is not
        Aesthetic(path=str(tmp_path / "hps.pt"), clip_model=str(tmp_path / "empty")).check_available()


class FailsAtFirstCall:
    def __call__(self, images, prompts):
        raise RuntimeError("the scoring service is down")


class FailingPlugin:
    @hookimpl
    def register_rewards(self, register):
        register("fails-at-first-call", FailsAtFirstCall)


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(discovery, "_cache", None)
    load_registry().register_plugin(FailingPlugin(), "failing", distribution="draft-failing-test", version="1.0")
    monkeypatch.chdir(tmp_path)
    argv = ["--no-progress", *sets(*FAST, "reward.name=fails-at-first-call", "train.steps=2")]
    for _ in range(2):  # the same command again meets the same error, not "run folder already exists"
        err = train_error(capsys, *argv, "--out", "run")
        assert "the scoring service is down" in err and "run it again" in err and "--resume" not in err
        assert not Path("run").exists()
    Path("empty").mkdir()  # an empty --out folder given by the user stays, empty
    train_error(capsys, *argv, "--out", "empty")
    assert Path("empty").is_dir() and not any(Path("empty").iterdir())
