"""What ``--lora`` accepts and refuses: a run's LoRA, its checkpoint folders and its kohya export apply
exactly; a LoRA of another model, a model's full weights, an image or a bad scale is one paragraph
(exit 2) naming what was found. Also the run side of it: the model card's usage line names the
final folder, ``--no-progress`` prints step lines, and a resume cannot switch models."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from cli_support import run_error
from safetensors.torch import save_file

from draft_core.cli import main
from draft_core.lora import add_lora, save_lora
from draft_core.lora.card import write_model_card
from draft_core.models.loading import load_model

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-jpeg.yaml"  # tiny-random, DRaFT-1, JPEG


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step tiny-random run (lora.alpha=2 at rank 4, so its LoRA scale is 0.5), and what it printed."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            [
                "train",
                str(CONFIG),
                "--set",
                "sampler.steps=2",
                "--set",
                "train.steps=2",
                "--set",
                "train.batch_size=1",
                "--set",
                "train.sample_per_prompt=1",
                "--set",
                "train.sample_prompts=[a cat]",
                "--set",
                "lora.rank=4",
                "--set",
                "lora.alpha=2",
                "--set",
                "train.log_every=1",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
    assert code == 0, err.getvalue()
    return run, err.getvalue()


@pytest.fixture(scope="module")
def digits_lora(tmp_path_factory):
    """A LoRA of the digits model with both factors random, and its model card."""
    model = load_model("digits", "cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        add_lora(model.unet, rank=2, init=False)
    folder = tmp_path_factory.mktemp("digits-lora")
    save_lora(model.unet, folder)
    write_model_card(folder, {"base_model": "digits"})
    return folder


def sampled(capsys, out, *loras: str) -> torch.Tensor:
    argv = [
        "sample",
        "--model",
        "tiny-random",
        "--prompt",
        "a cat",
        "--n",
        "1",
        "--steps",
        "2",
        "--save-tensor",
        "--out",
        str(out),
    ]
    assert main(argv + [a for lora in loras for a in ("--lora", lora)]) == 0, capsys.readouterr()
    capsys.readouterr()
    return torch.load(out / "images.pt", weights_only=True)


# -- a LoRA of another model ------------------------------------------------------------------------
def test_a_lora_of_another_model_names_both_models(capsys, tmp_path, digits_lora):
    message = run_error(
        capsys,
        "sample",
        "--model",
        "tiny-random",
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--lora",
        str(digits_lora),
        "--out",
        str(tmp_path / "o"),
    )
    assert "trained on 'digits'" in message and "'tiny-random'" in message and "--model digits" in message
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["lora", "fuse", "--model", "digits", "--out", "fused"],
        [
            "eval",
            "--model",
            "digits",
            "--prompts",
            "digits",
            "--reward",
            "jpeg-compressibility",
            "--steps",
            "2",
            "--out",
            "ev",
        ],
    ],
)
def test_fuse_and_eval_refuse_a_lora_of_another_model(capsys, tmp_path, monkeypatch, tiny_run, command):
    monkeypatch.chdir(tmp_path)
    message = run_error(capsys, *command, "--lora", str(tiny_run[0]))
    assert "trained on 'tiny-random'" in message and "'digits'" in message
    assert not any(tmp_path.iterdir())


def test_resume_on_another_model_is_refused(capsys, tiny_run, no_model):
    run, _ = tiny_run
    before = (run / "config.yaml").read_text()
    message = run_error(capsys, "train", "--resume", str(run), "--set", "model.name=digits")
    assert "'tiny-random'" in message and "'digits'" in message
    assert (run / "config.yaml").read_text() == before


# -- what a run writes ---------------------------------------------------------------------------
def test_the_model_card_names_the_final_lora_folder(tiny_run):
    run, _ = tiny_run
    card = (run / "lora" / "README.md").read_text()
    assert ".tmp" not in card and f"--lora {run / 'lora'}:1.0" in card


def test_no_progress_prints_a_line_every_log_every_steps(tiny_run):
    _, err = tiny_run
    lines = [line for line in err.splitlines() if "step " in line and "/2:" in line]
    assert [line.split(":")[0].split()[-1] for line in lines] == ["1/2", "2/2"], err
    assert all("reward" in line and "s/step" in line for line in lines)


# -- layouts that apply ------------------------------------------------------------------------------
def test_a_checkpoint_folder_is_its_lora(capsys, tmp_path, tiny_run):
    """The checkpoint's lora.safetensors holds the final LoRA; its alpha (2, not the rank) comes from the run."""
    run, _ = tiny_run
    from_folder = sampled(capsys, tmp_path / "a", f"{run}/lora:1.5")
    from_checkpoint = sampled(capsys, tmp_path / "b", f"{run}/checkpoints/step-000002:1.5")
    assert torch.equal(from_checkpoint, from_folder)


def test_a_kohya_file_applies_like_the_lora_it_came_from(capsys, tmp_path, tiny_run, recwarn):
    run, _ = tiny_run
    assert main(["lora", "export", str(run), "--out", str(tmp_path / "k.safetensors")]) == 0
    plain = sampled(capsys, tmp_path / "plain")
    ours = sampled(capsys, tmp_path / "a", f"{run}/lora:3")
    kohya = sampled(capsys, tmp_path / "b", f"{tmp_path / 'k.safetensors'}:3")
    # diffusers' converter scales by alpha/rank as peft does; the same UNet up to float rounding
    # of the factors (values in [0, 1], ~1e-7 apart), while the LoRA itself moves the image far more.
    torch.testing.assert_close(kohya, ours, rtol=1e-5, atol=1e-5 * ours.abs().max().item())
    assert (ours - plain).abs().max() > 1e-3
    # Two adapters at once: peft's "Already found a peft_config" warning is not shown to users.
    sampled(capsys, tmp_path / "c", f"{run}/lora:0.5", f"{tmp_path / 'k.safetensors'}:0.5")
    assert not [w for w in recwarn if "peft_config" in str(w.message)]


# -- what is refused ---------------------------------------------------------------------------------
def test_a_models_full_weights_are_not_a_lora(capsys, tmp_path):
    load_model("tiny-random").save_pretrained(tmp_path / "fused")
    weights = tmp_path / "fused" / "unet" / "diffusion_pytorch_model.safetensors"
    message = run_error(
        capsys,
        "sample",
        "--model",
        "tiny-random",
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--lora",
        str(weights),
        "--out",
        str(tmp_path / "o"),
    )
    assert "applies to no module" in message and "conv_in" in message and "--model" in message


def test_a_text_encoder_lora_is_not_a_unet_lora(capsys, tmp_path):
    file = tmp_path / "te.safetensors"
    save_file(
        {
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 32),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(32, 2),
        },
        str(file),
    )
    message = run_error(
        capsys,
        "sample",
        "--model",
        "tiny-random",
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--lora",
        str(file),
        "--out",
        str(tmp_path / "o"),
    )
    assert "text_encoder only" in message


def test_an_image_is_not_a_lora_file(capsys, tmp_path, tiny_run):
    image = tiny_run[0] / "samples" / "step-000000.png"
    message = run_error(
        capsys,
        "sample",
        "--model",
        "tiny-random",
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--lora",
        str(image),
        "--out",
        str(tmp_path / "o"),
    )
    assert "is not a LoRA file" in message and "pickle" not in message


@pytest.mark.parametrize("scale", ["abc", "nan", "1:2"])
def test_a_bad_scale_says_bad_scale(capsys, tmp_path, tiny_run, no_model, scale):
    message = run_error(
        capsys, "sample", "--prompt", "a cat", "--lora", f"{tiny_run[0]}:{scale}", "--out", str(tmp_path / "o")
    )
    assert "bad scale" in message and "no LoRA found" not in message
