"""Tests of the ``ocr`` reward with its real PP-OCR weights (shipped in the rapidocr-onnxruntime
wheel): it must read text that the test draws with PIL, score other text and blank images low,
and pass the reward checklist as a reward without gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from draft_rewards_ocr import OCRReward, edit_similarity, requested_text
from PIL import Image, ImageDraw, ImageFont

from draft_core.errors import ModelLoadError
from draft_core.testing import RewardConformance, assert_plugin_listed


def drawn(*texts: str, size: tuple[int, int] = (256, 96)) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1]: each text in black on white, in Pillow's bundled font (no system font)."""
    font = ImageFont.load_default(size=40)
    images = []
    for text in texts:
        image = Image.new("RGB", size, "white")
        ImageDraw.Draw(image).text((12, 22), text, fill="black", font=font)
        images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


class TestOCRConformance(RewardConformance):
    def make_reward(self):
        return OCRReward(target="HELLO")


def test_requested_text():
    assert requested_text('a neon sign that says "OPEN"') == "OPEN"
    assert requested_text("a poster reading \u201cbig sale\u201d in red") == "big sale"
    assert requested_text('a mug with "tea" and "milk" on it') == "tea milk"
    assert requested_text("the word 'stop' on a sign.") == "stop"
    assert requested_text("a cat's toy on the painter's table") is None
    assert requested_text("a handwritten digit three") is None


def test_edit_similarity():
    assert edit_similarity("kitten", "sitting", case_sensitive=True) == pytest.approx(1 - 3 / 7)
    assert edit_similarity("Open Sesame", "OPENSESAME") == 1.0  # case and spaces ignored by default
    assert edit_similarity("Open Sesame", "OPENSESAME", case_sensitive=True, ignore_spaces=False) < 0.5
    assert edit_similarity("", "") == 1.0 and edit_similarity("", "abc") == 0.0


def test_reads_drawn_text():
    reward = OCRReward()
    texts = ["HELLO", "draft 2026"]
    images = drawn(*texts)
    assert [t.replace(" ", "") for t in reward.read(images)] == [t.replace(" ", "") for t in texts]
    prompts = [f'a sign that says "{t}"' for t in texts]
    assert torch.equal(reward(images, prompts), torch.ones(2))  # exact: every character read


def test_other_text_and_blank_score_low():
    reward = OCRReward(target="HELLO")
    images = torch.cat([drawn("WORLD"), torch.ones(1, 3, 96, 256), torch.zeros(1, 3, 96, 256)])
    reads = reward.read(images)
    assert reads[1:] == ["", ""], reads
    scores = reward(images, [])
    # WORLD vs HELLO shares only the L at the same place ... at best 2 of 5 letters survive an alignment
    assert scores[0] <= 0.4 and scores[1:].tolist() == [0.0, 0.0], (reads, scores)
    # and the same text drawn with one letter wrong scores in between
    assert 0.7 <= OCRReward(target="HELLO")(drawn("HELLD"), []).item() < 1.0


def test_margin_frames_the_image_in_its_border_colour():
    """A margin (for text at the edge, as in digits' samples) keeps the image and still reads it."""
    image = drawn("42", size=(96, 96))[..., 32:62, 12:57]  # the digits fill the crop edge to edge
    assert OCRReward(target="42", margin=16).read(image) == ["42"]
    from draft_rewards_ocr.reward import with_margin

    out = with_margin(image, 16)
    assert out.shape[-2:] == (62, 77) and torch.equal(out[..., 16:-16, 16:-16], image)


def test_prompt_without_quotes_is_refused():
    with pytest.raises(ValueError, match=r"'a handwritten digit three' quotes no text.*`target:`"):
        OCRReward()(torch.ones(1, 3, 32, 32), ["a handwritten digit three"])


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"target": 3.5}, "target"),
        ({"target": True}, "target"),
        ({"detect_side": 0}, "detect_side"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"case_sensitive": "yes"}, "case_sensitive"),
        ({"margin": -1}, "margin"),
    ],
)
def test_bad_options(kwargs, named):
    with pytest.raises(ValueError, match=f"ocr: {named}"):
        OCRReward(**kwargs)


def test_a_whole_number_target_is_its_text():
    """`--reward ocr:target=3` and YAML's `target: 3` give the number 3: the images should show "3"."""
    image = drawn("3")
    assert OCRReward(target=3)(image, []).item() == OCRReward(target="3")(image, []).item() == 1.0


def test_missing_engine_names_the_package(monkeypatch):
    import sys

    from draft_rewards_ocr import reward as module

    monkeypatch.setattr(module, "_ENGINES", {})
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # as if not installed
    with pytest.raises(ModelLoadError, match="pip install rapidocr-onnxruntime"):
        OCRReward().check_available()


def test_installed_distribution_registers_ocr(capsys):
    assert_plugin_listed("reward", "ocr", "draft-rewards-ocr", "ocr", capsys)


def test_trains_with_ddpo_and_is_refused_by_draft(tmp_path, capsys):
    """`reward: {name: ocr, target: ...}` drives a policy-gradient step end to end; DRaFT, which
    needs the reward's gradient, refuses it by name before any model loads."""
    import json

    from draft_core import cli

    sets = []
    for s in [
        "model.name=tiny-random",
        "prompts.source=animals",
        "sampler={name: ddim, steps: 2, eta: 1.0}",
        "estimator={name: ddpo, minibatches: 1, stat_min_count: 2}",
        "reward={name: ocr, target: A}",
        "train.batch_size=2",
        "train.steps=1",
        "train.sample_every=0",
        "train.sample_prompts=[a cat]",
        "train.sample_per_prompt=1",
        "lora.rank=2",
    ]:
        sets += ["--set", s]
    out = tmp_path / "run"
    assert cli.main(["train", "--preset", "quickstart", "--no-progress", "--out", str(out), *sets]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and 0.0 <= rows[0]["reward_mean"] <= 1.0
    refused = cli.main(
        [
            "train",
            "--preset",
            "quickstart",
            "--no-progress",
            "--out",
            str(tmp_path / "draft"),
            *sets,
            "--set",
            "estimator={name: draft-k, k: 1}",
        ]
    )
    assert refused == 2 and "reward 'ocr' has no gradient" in capsys.readouterr().err
