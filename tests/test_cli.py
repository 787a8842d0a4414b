"""The ``draft`` command line: plugins, train's input errors and --dry-run, and sample,
whose images must equal a vanilla diffusers pipeline's (with and without a LoRA)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_support import run_error
from diffusers import StableDiffusionPipeline
from PIL import Image

from draft_core.cli import main
from draft_core.config import load_config
from draft_core.lora import add_lora, save_lora
from draft_core.models.loading import load_model

BUILTINS = {
    "samplers": ["cps", "ddim", "ddpm", "euler", "flow-sde"],
    "estimators": [
        "ddpo",
        "diffusion-nft",
        "direct-align",
        "dpg",
        "draft",
        "draft-k",
        "draft-lv",
        "drtune",
        "grpo",
        "kl",
        "mix-grpo",
        "refl",
    ],  # kl: a wrapper of any estimator
    "rewards": [
        "aesthetic",
        "clip-score",
        "digit-classifier",
        "diversity",
        "hpsv2",
        "ink-coverage",
        "jpeg-compressibility",
        "jpeg-incompressibility",
        "jpeg-size",
        "jpeg-size-inverse",
        "pickscore",
        "remote",
        "rotation-anticorrelation",
    ],
}
STEPS, GUIDANCE, SEED = 3, 7.5, 5


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Run in a scratch folder (train's default run folder is relative)."""
    monkeypatch.chdir(tmp_path)


# -- draft plugins ----------------------------------------------------------------------------
def test_plugins_lists_the_builtins(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines()[1:] if line.strip()}
    for kind, names in BUILTINS.items():
        for name in names:
            assert name in rows, (name, out)
            assert rows[name].split()[0] == kind[:-1]
            assert "draft-diffusion" in rows[name]


def test_plugins_json(capsys):
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {
        "samplers",
        "estimators",
        "rewards",
        "models",
        "errors",
        "conflicts",
        "claim_conflicts",
        "unknown_allowed",
    }
    for kind, names in BUILTINS.items():
        ours = {e["name"]: e for e in data[kind] if e["distribution"] == "draft-diffusion"}
        assert sorted(ours) == names


def test_draft_console_script_runs():
    """The installed entry point itself, in a fresh interpreter."""
    script = Path(sys.executable).parent / "draft"
    env = {k: v for k, v in os.environ.items() if k not in ("DRAFT_PLUGINS", "DRAFT_STRICT_PLUGINS")}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([str(script), "plugins", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {
        "samplers",
        "estimators",
        "rewards",
        "models",
        "errors",
        "conflicts",
        "claim_conflicts",
        "unknown_allowed",
    }
    assert {e["name"] for e in data["estimators"]} >= set(BUILTINS["estimators"])


# -- draft train: input errors ---------------------------------------------------------------------
def test_train_unknown_key(capsys, no_model):
    message = run_error(capsys, "train", "--preset", "quickstart", "--set", "train.stpes=3")
    assert "'train.stpes'" in message and "Did you mean 'steps'?" in message


def test_train_unknown_estimator(capsys, no_model):
    message = run_error(capsys, "train", "--preset", "quickstart", "--set", "estimator.name=draft-kk")
    assert "'draft-kk'" in message
    assert (
        "Registered estimators: ddpo, diffusion-nft, direct-align, dpg, draft, draft-k, draft-lv, drtune, grpo, kl, "
        "mix-grpo, refl"
    ) in message
    assert "Did you mean 'draft-k'?" in message


def test_train_bad_type(capsys, no_model):
    message = run_error(capsys, "train", "--preset", "quickstart", "--set", "train.steps=many")
    assert "'train.steps'" in message and "'many'" in message and "int" in message


def test_train_bad_plugin_argument(capsys, no_model):
    message = run_error(
        capsys, "train", "--preset", "quickstart", "--set", "estimator.name=draft-k", "--set", "estimator.k=21"
    )
    assert "estimator.k=21" in message and "sampler.steps=20" in message


def test_train_malformed_set(capsys, no_model):
    assert "dotted.key=value" in run_error(capsys, "train", "--preset", "quickstart", "--set", "train.steps")


def test_train_missing_config_file(capsys, no_model):
    message = run_error(capsys, "train", "nope.yaml")
    assert "'nope.yaml'" in message and "does not exist" in message


def test_train_unknown_preset(capsys, no_model):
    assert "Did you mean 'quickstart'?" in run_error(capsys, "train", "--preset", "quikstart")


def test_train_needs_a_config_or_preset(capsys, no_model):
    message = run_error(capsys, "train")
    assert "CONFIG.yaml" in message and "--preset" in message


def test_train_resume_without_config_yaml(capsys, no_model, tmp_path):
    (tmp_path / "old").mkdir()
    message = run_error(capsys, "train", "--resume", str(tmp_path / "old"))
    assert "config.yaml" in message and "old" in message


def test_train_resume_with_a_preset(capsys, no_model, tmp_path):
    load_config(preset="quickstart").dump(tmp_path / "config.yaml")
    message = run_error(capsys, "train", "--resume", str(tmp_path), "--preset", "quickstart")
    assert "--resume" in message and "--preset" in message


def test_train_into_a_non_empty_folder(capsys, no_model, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    message = run_error(capsys, "train", "--preset", "quickstart", "--out", str(out))
    assert str(out) in message and f"--resume {out}" in message


# -- draft train --dry-run ------------------------------------------------------------------------
def test_train_dry_run_prints_the_resolved_config(capsys, no_model, tmp_path):
    assert main(["train", "--preset", "quickstart", "--dry-run", "--set", "train.steps=7"]) == 0
    out, err = capsys.readouterr()
    printed = yaml.safe_load(out)
    assert printed["train"]["steps"] == 7
    assert printed["estimator"] == {"name": "draft-lv", "n": 2, "kl": {"beta": 1e-3}}  # every argument written down
    (tmp_path / "printed.yaml").write_text(out)
    assert load_config(tmp_path / "printed.yaml") == load_config(overrides=["train.steps=7"], preset="quickstart")
    assert not (tmp_path / "runs").exists()


def test_train_dry_run_warns_when_a_learned_schedule_would_learn_only_some_knots(capsys, no_model):
    assert main(["train", "--preset", "quickstart", "--dry-run", "--set", "learn.guidance=true"]) == 0
    err = capsys.readouterr().err
    assert "[draft] warning: learn.guidance" in err and "steps 19 of 0-19" in err and "'draft'" in err


def test_train_dry_run_into_an_empty_out_folder(capsys, no_model, tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--preset", "quickstart", "--dry-run", "--out", "empty"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["steps"] == load_config(preset="quickstart").train.steps


# -- draft sample: input errors -----------------------------------------------------------------
def test_sample_missing_lora(capsys, no_model):
    message = run_error(capsys, "sample", "--prompt", "a cat", "--lora", "no/such/lora:0.5")
    assert "'no/such/lora:0.5'" in message and "no/such/lora" in message


@pytest.mark.parametrize("window", ["5:2", "abc", "0:51", "-1:3"])
def test_sample_bad_lora_steps(capsys, no_model, window):
    message = run_error(capsys, "sample", "--prompt", "a cat", f"--lora-steps={window}")
    assert f"'{window}'" in message and "START:END" in message


def test_sample_unknown_sampler(capsys, no_model):
    assert "'ddimm'" in run_error(capsys, "sample", "--prompt", "a cat", "--sampler", "ddimm")


def test_sample_lora_steps_with_three_fields(capsys, no_model):
    run_error(capsys, "sample", "--prompt", "a cat", "--steps", "3", "--lora-steps", "1:2:3")


@pytest.mark.parametrize("flag", ["--n", "--batch-size"])
def test_sample_zero_count(capsys, flag):
    run_error(capsys, "sample", "--prompt", "a cat", "--steps", "1", "--n", "1", flag, "0", "--out", "o")


# -- draft sample: images -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return load_model("tiny-random").save_pretrained(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A LoRA with both factors random, so it changes every image."""
    model = load_model("tiny-random")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        add_lora(model.unet, init=False)
    folder = tmp_path_factory.mktemp("lora")
    save_lora(model.unet, folder)
    return folder


@pytest.fixture(scope="module")
def pipe(model_dir):
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def vanilla(pipe, prompts: list[str]) -> torch.Tensor:
    return pipe(
        prompts,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(SEED),
        output_type="pt",
    ).images


@pytest.fixture(scope="module")
def vanilla_no_lora(pipe):
    return vanilla(pipe, ["a cat"] * 2)


def sample_tensor(capsys, out: Path, *argv: str) -> torch.Tensor:
    args = ["sample", "--prompt", "a cat", "--n", "2", "--steps", str(STEPS), "--guidance", str(GUIDANCE)]
    assert main([*args, "--seed", str(SEED), "--save-tensor", "--out", str(out), *argv]) == 0
    capsys.readouterr()
    return torch.load(out / "images.pt", weights_only=True)


def assert_same_sampling(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """Images in [0, 1] from two float32 runs of the same sampler (ours, diffusers' pipeline): they agree
    to rounding, which depends on the CPU's kernels (bitwise equal with AVX-512 ones, 7.5e-7 apart with
    AVX2 ones); guidance 7.0 for 7.5 moves them by 5e-3, a LoRA at scale 1 for 0.5 by 9e-2."""
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_sample_writes_images_and_a_grid(capsys, tmp_path):
    args = ["sample", "--model", "tiny-random", "--prompt", "a cat", "--n", "2", "--steps", "3", "--out", "tmp"]
    assert main(args) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    out = tmp_path / "tmp"
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "grid.png"]
    for i, name in enumerate(("0000.png", "0001.png")):
        with Image.open(out / name) as img:
            assert img.size == (64, 64) and img.mode == "RGB"
            params = img.text["parameters"]  # A1111's layout: prompt, then the settings line
        assert params.startswith(
            "a cat\nSteps: 3, Sampler: ddim, CFG scale: 7.5, Seed: 0, Size: 64x64, Model: tiny-random"
        )
        assert f"Index: {i}" in params


def test_sample_equals_the_vanilla_pipeline(capsys, tmp_path, model_dir, vanilla_no_lora):
    ours = sample_tensor(capsys, tmp_path / "s", "--model", str(model_dir))
    assert ours.shape == vanilla_no_lora.shape == (2, 3, 64, 64) and ours.dtype == torch.float32
    assert_same_sampling(ours, vanilla_no_lora)


def test_sample_in_batches_with_two_prompts(capsys, tmp_path, model_dir, pipe):
    """Images are ordered prompt by prompt; noise is drawn once for all, as the pipeline does."""
    ours = sample_tensor(capsys, tmp_path / "s", "--model", str(model_dir), "--prompt", "a dog", "--batch-size", "3")
    expected = vanilla(pipe, ["a cat", "a cat", "a dog", "a dog"])
    # Batches of 3 + 1 against one batch of 4: kernels of other shapes sum in another order (2.7e-6
    # apart here, 4.4e-6 with AVX2 kernels); wrong noise slices or prompt order would be ~0.1 apart.
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=3e-5 * expected.abs().max().item())


def test_sample_with_a_scaled_lora_equals_the_vanilla_pipeline(
    capsys, tmp_path, model_dir, lora_dir, pipe, vanilla_no_lora
):
    ours = sample_tensor(capsys, tmp_path / "s", "--model", str(model_dir), "--lora", f"{lora_dir}:0.5")
    pipe.load_lora_weights(lora_dir, adapter_name="a")
    try:
        pipe.set_adapters(["a"], adapter_weights=[0.5])
        expected = vanilla(pipe, ["a cat"] * 2)
    finally:
        pipe.unload_lora_weights()
    assert_same_sampling(ours, expected)
    assert (ours - vanilla_no_lora).abs().max() > 1e-3  # the LoRA mattered


def test_sample_with_an_empty_lora_window_equals_no_lora(capsys, tmp_path, model_dir, lora_dir, vanilla_no_lora):
    ours = sample_tensor(
        capsys, tmp_path / "s", "--model", str(model_dir), "--lora", str(lora_dir), "--lora-steps", "0:0"
    )
    assert_same_sampling(ours, vanilla_no_lora)
