"""Local paths stay local: `draft lora push` makes every path in what it stages relative to the run folder (or
redacts it) and says so; model cards, kohya metadata and grids write relative paths where they can."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from run_fixtures import make_run
from safetensors import safe_open

from draft_core.cli import main
from draft_core.lora.card import command_line, run_card_info, write_model_card
from draft_core.lora.redact import local_path, redact_text
from draft_core.media import generation_params, read_png_info, save_png


def test_push_uploads_no_absolute_path_and_says_what_it_changed(tmp_path, capsys):
    run = make_run(tmp_path, lora=True)
    # What an absolute --out leaves in a run: the command in the model card, the LoRA's path in the grids.
    write_model_card(
        run / "lora", run_card_info(run, command=f"draft train --preset quickstart --out {run}"), location=run / "lora"
    )
    for grid in sorted((run / "samples").glob("step-*.png")):
        params = generation_params(
            "a digit", model="digits", sampler="ddim", steps=2, guidance=7.5, seed=0, loras=[(str(run / "lora"), 1.0)]
        )
        save_png(Image.open(grid).convert("RGB"), grid, params)
    assert main(["lora", "push", str(run), "--repo", "alice/digits-bold", "--dry-run"]) == 0
    err = capsys.readouterr().err
    staged = run / "push"
    for file in staged.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            assert str(tmp_path).encode() not in data and f"{Path.home()}/".encode() not in data, file
    for name in ("README.md", "report.html", "images/before_after.png", "digits-bold_kohya.safetensors"):
        assert f"[draft] push: {name}: " in err, (name, err)
    assert f"--out {run.name}" in (staged / "README.md").read_text()
    assert read_png_info(staged / "images" / "before_after.png")["loras"] == [{"path": "lora", "scale": 1.0}]
    with safe_open(str(staged / "digits-bold_kohya.safetensors"), "pt") as f:
        assert f.metadata()["draft_source"] == "lora/pytorch_lora_weights.safetensors"


def test_cards_and_kohya_files_write_paths_relative_to_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "x"
    assert (
        command_line(["draft", "train", "--preset", "quickstart", "--out", str(out)])
        == "draft train --preset quickstart --out runs/x"
    )
    assert local_path(out / "lora") == "runs/x/lora" and local_path("relative/path") == "relative/path"
    assert local_path(Path.home() / "a" / "b") in ("~/a/b", str(Path("a/b")))  # ~ unless the home is the working folder
    make_run(tmp_path / "runs", name="x", lora=True)
    assert main(["lora", "export", str(out / "lora"), "--out", str(tmp_path / "k.safetensors")]) == 0
    with safe_open(str(tmp_path / "k.safetensors"), "pt") as f:
        assert f.metadata()["draft_source"] == "runs/x/lora/pytorch_lora_weights.safetensors"


def test_redaction_leaves_urls_and_markup_alone(tmp_path):
    run = tmp_path / "run"
    text = (
        f"see https://huggingface.co/alice/x and </script> a/b {run}/lora/x.safetensors {run} {tmp_path}/other/file.txt"
    )
    new, count = redact_text(text, run)
    assert new == "see https://huggingface.co/alice/x and </script> a/b lora/x.safetensors run <local>/file.txt"
    assert count == 3
