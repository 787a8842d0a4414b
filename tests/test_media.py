"""Pictures that explain themselves: labels drawn on grids, generation parameters in PNG text."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from draft_core.media import (
    common_prefix,
    generation_params,
    parameters_text,
    read_png_info,
    save_before_after,
    save_grid,
)

PROMPTS = ["a handwritten digit zero", "a handwritten digit one"]


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_labels_are_drawn_in_their_bands_and_the_cells_keep_their_pixels(tmp_path):
    images = _images(4)
    path = save_grid(images, tmp_path / "g.png", nrow=2, rows=PROMPTS, cols=["seed 1", "seed 2"], title="step 0")
    layout = read_png_info(path)["layout"]
    left, top, scale = layout["left"], layout["top"], layout["scale"]
    assert scale == 2 and layout["cell"] == [64, 64]  # 32 px cells enlarged so labels fit beside them
    px = _pixels(path)
    band_left, band_top = px[top:, :left], px[:top, left:]
    assert (band_left < 128).any() and (band_top < 128).any()  # dark text on the white bands
    # Other labels give other pixels in the bands, and the same cells.
    other = save_grid(
        images, tmp_path / "h.png", nrow=2, rows=["a cat", "a dog"], cols=["step 5", "step 9"], title="step 0"
    )
    layout2 = read_png_info(other)["layout"]
    px2 = _pixels(other)
    assert layout2["top"] == top
    assert not np.array_equal(px2[:top, layout2["left"] :], band_top)
    assert not np.array_equal(px2[top:, : layout2["left"]], band_left[:, : layout2["left"]])
    # Every cell is the image, enlarged by pixel repetition (rounded as torchvision rounds).
    expected = images.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).repeat_interleave(2, -1).repeat_interleave(2, -2)
    for k in range(4):
        r, c = divmod(k, 2)
        y, x = top + 2 + r * 66, left + 2 + c * 66
        assert np.array_equal(px[y : y + 64, x : x + 64], expected[k].permute(1, 2, 0).numpy()), k


def test_unlabelled_grid_is_unchanged(tmp_path):
    """Without labels, save_grid is torchvision's grid (benchmark figures rely on it)."""
    from torchvision.utils import make_grid, save_image

    images = _images(3)
    save_grid(images, tmp_path / "a.png", nrow=3)
    save_image(make_grid(images, nrow=3, padding=2, pad_value=1.0), tmp_path / "b.png")
    assert np.array_equal(_pixels(tmp_path / "a.png"), _pixels(tmp_path / "b.png"))


def test_long_shared_prompts_move_their_common_words_to_the_title(tmp_path):
    assert common_prefix(PROMPTS) == "a handwritten digit "
    assert common_prefix(["a cat", "a"]) == "" and common_prefix(["one prompt only"]) == ""
    path = save_grid(_images(2), tmp_path / "c.png", nrow=2, rows=["base"], cols=PROMPTS, title="contact sheet")
    layout = read_png_info(path)["layout"]
    assert layout["title"] > 0 and layout["top"] > layout["title"]
    # Non-Latin-1 text cannot crash the bitmap font.
    save_grid(_images(1), tmp_path / "d.png", nrow=1, rows=["猫 — café"], cols=["…"], title="ü ✓")


def test_generation_parameters_are_stored_as_a1111_text_and_json(tmp_path):
    params = generation_params(
        "a cat",
        model="tiny-random",
        sampler="ddim",
        steps=20,
        guidance=7.5,
        seed=3,
        size=(64, 48),
        loras=[("runs/x/lora", 0.8)],
        step=40,
    )
    path = save_grid(_images(1), tmp_path / "p.png", nrow=1, params=params)
    with Image.open(path) as im:
        text = im.text["parameters"]
    prompt, settings = text.split("\n")
    assert prompt == "a cat <lora:runs/x/lora:0.8>"
    assert settings.startswith("Steps: 20, Sampler: ddim, CFG scale: 7.5, Seed: 3, Size: 48x64, Model: tiny-random")
    assert "Step: 40" in settings and settings.endswith("Software: draft")
    info = read_png_info(path)
    assert info["loras"] == [{"path": "runs/x/lora", "scale": 0.8}] and info["prompt"] == "a cat" and info["seed"] == 3
    assert parameters_text(
        generation_params(["a", "b", "a"], model="m", sampler="s", steps=1, guidance=1, seed=0)
    ).startswith("a | b\n")


def test_before_after_shares_the_row_labels_and_keeps_both_grids_cells(tmp_path):
    a, b = _images(4, 0), _images(4, 1)
    kw = dict(nrow=2, rows=PROMPTS, cols=["sample 1", "sample 2"])
    params = generation_params(PROMPTS, model="m", sampler="ddim", steps=2, guidance=3, seed=0, step=4)
    before = save_grid(a, tmp_path / "before.png", title="step 0", **kw)
    after = save_grid(b, tmp_path / "after.png", title="step 4", params=params, **kw)
    both = save_before_after(before, after, tmp_path / "ba.png", ("before", "after"))
    la, lab = read_png_info(before)["layout"], read_png_info(both)["layout"]
    pa, pb, pab = _pixels(before), _pixels(after), _pixels(both)
    body_w = pa.shape[1] - la["left"]
    # The left half's cells are the before grid's, the right half's the after grid's, pixel for pixel.
    assert np.array_equal(pab[lab["top"] :, : la["left"] + body_w], pa[la["top"] :])
    assert np.array_equal(pab[lab["top"] :, la["left"] + body_w + 8 :], pb[la["top"] :, la["left"] :])
    assert read_png_info(both)["step"] == 4  # the after grid's parameters


def test_side_by_side_keeps_every_grids_cells_in_order(tmp_path):
    from draft_core.media import save_side_by_side

    kw = dict(nrow=2, rows=PROMPTS, cols=["sample 1", "sample 2"])
    grids = [save_grid(_images(4, k), tmp_path / f"g{k}.png", title=f"step {k}", **kw) for k in range(3)]
    both = save_side_by_side(grids, tmp_path / "all.png", ["step 0", "step 1: best", "step 2"])
    la, lab = read_png_info(grids[0])["layout"], read_png_info(both)["layout"]
    out = _pixels(both)
    x = la["left"]
    for grid in grids:
        body = _pixels(grid)[la["top"] :, la["left"] :]
        assert np.array_equal(out[lab["top"] :, x : x + body.shape[1]], body)
        x += body.shape[1] + 8
    assert x - 8 == out.shape[1]
    with pytest.raises(ValueError, match="one label per grid"):
        save_side_by_side(grids, tmp_path / "bad.png", ["only one"])
