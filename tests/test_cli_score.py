"""`draft score`: image files in, one score per image out, for any registered reward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from cli_support import run_error
from PIL import Image
from reward_models import TINY_OPEN_CLIP, save_tiny_hps

from draft_core import hookimpl
from draft_core.cli import main
from draft_rewards.digits import DigitClassifier
from draft_rewards.hpsv2 import HPSv2
from draft_rewards.jpeg import JpegCompressibility


def _save(path, array):
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    """A folder with a smooth ramp and a noise image (16x16 PNG), and a 24x16 JPEG-free PNG apart."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    ramp = np.broadcast_to(np.linspace(40, 220, 16, dtype=np.uint8)[None, :, None], (16, 16, 3)).copy()
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    _save(folder / "a_ramp.png", ramp)
    _save(folder / "b_noise.png", noise)
    (folder / "notes.txt").write_text("not an image")
    wide = _save(tmp_path / "wide.png", np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8))
    return folder, wide


def _tensor(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float()[None] / 255


def _lines(capsys):
    out, err = capsys.readouterr()
    return out.splitlines()


def test_scores_a_folder_and_a_file_in_order(capsys, images):
    folder, wide = images
    assert main(["score", "--reward", "jpeg-compressibility", str(folder), str(wide)]) == 0
    lines = _lines(capsys)
    paths = [folder / "a_ramp.png", folder / "b_noise.png", wide]
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in paths]
    scores = [float(line.split("\t")[1]) for line in lines]
    expected = [JpegCompressibility()(_tensor(p), [""]).item() for p in paths]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert scores[0] > scores[1]  # the ramp compresses better than noise


def test_json_lines_and_reward_arguments(capsys, images):
    folder, _ = images
    argv = ["score", "--reward", "digit-classifier", "--set", "reward.target=3", "--json", str(folder)]
    assert main(argv) == 0
    rows = [json.loads(line) for line in _lines(capsys)]
    assert [r["path"] for r in rows] == [str(folder / "a_ramp.png"), str(folder / "b_noise.png")]
    for row in rows:
        assert row["score"] == pytest.approx(DigitClassifier(target=3)(_tensor(row["path"]), [""]).item(), rel=1e-5)
        assert row["prompt"] == ""


def test_learned_reward_with_local_weights_and_prompt_file(capsys, images, tmp_path):
    folder, _ = images
    checkpoint = save_tiny_hps(tmp_path / "HPS_v2_compressed.pt")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a smooth gradient\n\na noisy texture\n")  # blank lines are skipped
    arch = yaml.safe_dump(TINY_OPEN_CLIP, default_flow_style=True).strip()
    argv = [
        "score",
        "--reward",
        "hpsv2",
        "--set",
        f"reward.path={checkpoint}",
        "--set",
        f"reward.arch={arch}",
        "--prompts",
        str(prompts),
        "--json",
        str(folder),
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in _lines(capsys)]
    reward = HPSv2(path=str(checkpoint), arch=TINY_OPEN_CLIP)
    batch = torch.cat([_tensor(folder / "a_ramp.png"), _tensor(folder / "b_noise.png")])
    expected = reward(batch, ["a smooth gradient", "a noisy texture"]).tolist()
    assert [r["prompt"] for r in rows] == ["a smooth gradient", "a noisy texture"]
    np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=1e-5, atol=1e-6)


def test_errors_are_one_paragraph(capsys, images, tmp_path):
    folder, wide = images
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert "holds no image files" in run_error(capsys, "score", "--reward", "jpeg-compressibility", str(empty))
    assert "does not exist" in run_error(
        capsys, "score", "--reward", "jpeg-compressibility", str(tmp_path / "nope.png")
    )
    assert "could not be read as an image" in run_error(
        capsys, "score", "--reward", "jpeg-compressibility", str(tmp_path / "broken.png")
    )
    assert "unknown reward 'aesthetics'" in run_error(capsys, "score", "--reward", "aesthetics", str(wide))
    assert "unknown argument 'qualty'" in run_error(
        capsys, "score", "--reward", "jpeg-compressibility", "--set", "reward.qualty=3", str(wide)
    )
    assert "quality" in run_error(
        capsys, "score", "--reward", "jpeg-compressibility", "--set", "reward.quality=0", str(wide)
    )
    assert "reward arguments only" in run_error(
        capsys, "score", "--reward", "jpeg-compressibility", "--set", "train.steps=3", str(wide)
    )
    assert "--prompt TEXT" in run_error(capsys, "score", "--reward", "pickscore", str(wide))
    # the digit classifier without a target reads the digit from the prompt: it needs one too
    assert "--prompt TEXT" in run_error(capsys, "score", "--reward", "digit-classifier", str(wide))
    assert "must be square" in run_error(capsys, "score", "--reward", "rotation-anticorrelation", str(wide))
    assert "is not a device" in run_error(
        capsys, "score", "--reward", "jpeg-compressibility", "--device", "gpu0", str(wide)
    )
    prompts = tmp_path / "one.txt"
    prompts.write_text("just one\n")
    assert "1 prompts (non-empty lines) for 2 images" in run_error(
        capsys, "score", "--reward", "clip-score", "--prompts", str(prompts), str(folder)
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_a_clear_error(capsys, images):
    _, wide = images
    assert "CUDA is not available" in run_error(
        capsys, "score", "--reward", "jpeg-compressibility", "--device", "cuda", str(wide)
    )


def test_missing_weights_offline_is_a_clear_error(capsys, images, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _, wide = images
    err = run_error(capsys, "score", "--reward", "hpsv2", "--prompt", "a cat", str(wide))
    assert "xswu/HPSv2" in err and "HPS_v2_compressed.pt" in err and "--set reward.path=" in err


def test_a_folder_skips_drafts_own_contact_sheets(capsys, images):
    folder, _ = images
    for name in ("grid.png", "contact_sheet.png", "before_after.png"):
        _save(folder / name, np.zeros((16, 48, 3), dtype=np.uint8))
    assert main(["score", "--reward", "jpeg-compressibility", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert [line.split("\t")[0].rsplit("/", 1)[-1] for line in out.splitlines()] == ["a_ramp.png", "b_noise.png"]
    assert "skipping before_after.png, contact_sheet.png, grid.png" in err
    # Named as a file, a sheet is scored like any image.
    assert main(["score", "--reward", "jpeg-compressibility", str(folder / "grid.png")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


class HalfNaN:
    """NaN for the second image of each batch."""

    def __call__(self, images, prompts):
        values = images.mean(dim=(1, 2, 3))
        return torch.where(torch.arange(len(values)) == 1, torch.full_like(values, float("nan")), values)


class HalfNaNPlugin:
    @hookimpl
    def register_rewards(self, register):
        register("half-nan", HalfNaN)


@pytest.mark.parametrize("as_json", [False, True])
def test_a_non_finite_score_is_visible(capsys, images, monkeypatch, as_json):
    from draft_core.plugins import discovery, load_registry

    monkeypatch.setattr(discovery, "_cache", None)
    load_registry().register_plugin(HalfNaNPlugin(), "half_nan", distribution="draft-half-nan-test", version="1.0")
    folder, _ = images
    assert main(["score", "--reward", "half-nan", str(folder), *(["--json"] if as_json else [])]) == 1
    out, err = capsys.readouterr()
    if as_json:
        rows = [json.loads(line) for line in out.splitlines()]  # valid JSON: null, not NaN
        assert rows[0]["score"] is not None and rows[1]["score"] is None
    else:
        assert out.splitlines()[1].endswith("\tnan")
    assert "1 of 2 scores are not finite" in err and "b_noise.png" in err


def test_a_prompts_file_that_is_not_utf8(capsys, images, tmp_path):
    folder, _ = images
    (tmp_path / "prompts.txt").write_bytes(b"a cat\n\xff\xfe a dog\n")
    message = run_error(
        capsys, "score", "--reward", "clip-score", "--prompts", str(tmp_path / "prompts.txt"), str(folder)
    )
    assert "not UTF-8" in message and "prompts.txt" in message
