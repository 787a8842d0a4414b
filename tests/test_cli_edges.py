"""Rough edges of the command line: --version, a closed pipe, --set without '=', model names close to
an embedded one, the HF_HUB_OFFLINE advice, devices that are not there, and `draft sample` into a
folder that is a file or holds an earlier sample's images."""

from __future__ import annotations

import io
import os
import sys

import pytest
import torch
from cli_support import run_error

from draft_core.cli import main


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty hub cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_version(capsys):
    from draft_core import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"draft {__version__}\n"


def test_a_closed_pipe_is_no_traceback(monkeypatch, capsys):
    """`draft plugins --json | head`: the reader has gone when draft writes; no BrokenPipeError escapes."""
    read, write = os.pipe()
    os.close(read)
    stdout = io.TextIOWrapper(os.fdopen(write, "wb"))
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["plugins", "--json"]) == 1
    monkeypatch.undo()
    stdout.close()  # what the interpreter does at exit: nothing is left to fail
    assert "Traceback" not in capsys.readouterr().err


def test_set_without_an_equals_sign_says_so(capsys, no_model):
    message = run_error(capsys, "train", "--preset", "quickstart", "--set", "train.lr", "1e-3")
    assert "'train.lr' has no '='" in message and "--set train.lr=1e-3" in message and "dotted.key=value" in message


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--preset", "quickstart", "--dry-run", "--set", "model.name=digitz"],
        ["sample", "--model", "digitz", "--prompt", "a cat"],
    ],
)
def test_a_model_name_close_to_an_embedded_one(capsys, offline, command):
    message = run_error(capsys, *command)
    assert "'digitz'" in message and "Did you mean 'digits'?" in message
    # The user already set HF_HUB_OFFLINE=1: the message says so rather than telling them to set it.
    assert "HF_HUB_OFFLINE is set" in message and "set HF_HUB_OFFLINE=1" not in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_sample_on_cuda_without_cuda(capsys, no_model):
    assert "CUDA is not available" in run_error(capsys, "sample", "--prompt", "a cat", "--device", "cuda")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks the message on machines without MPS")
def test_sample_on_mps_without_mps(capsys, no_model):
    assert "MPS" in run_error(capsys, "sample", "--prompt", "a cat", "--device", "mps")


def test_sample_out_is_an_existing_file(capsys, no_model, tmp_path):
    (tmp_path / "taken").write_text("x")
    message = run_error(capsys, "sample", "--prompt", "a cat", "--out", str(tmp_path / "taken"))
    assert "is a file" in message and (tmp_path / "taken").read_text() == "x"


def test_sample_into_a_folder_of_earlier_images(capsys, tmp_path, monkeypatch):
    """8 earlier images and a grid: refused as they are; with --overwrite, 1 new image and no stale ones."""
    out = tmp_path / "out"
    out.mkdir()
    for name in [f"{i:04d}.png" for i in range(8)] + ["grid.png"]:
        (out / name).write_bytes(b"earlier")
    (out / "notes.txt").write_text("mine")
    argv = ["sample", "--model", "tiny-random", "--prompt", "a cat", "--n", "1", "--steps", "2", "--out", str(out)]
    message = run_error(capsys, *argv)
    assert "9 files of an earlier draft sample" in message and "0000.png" in message and "--overwrite" in message
    assert main([*argv, "--overwrite"]) == 0
    assert "replacing the 9 files" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "grid.png", "notes.txt"]
    assert (out / "0000.png").read_bytes() != b"earlier"
