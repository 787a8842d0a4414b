"""The ``ocr`` reward: does the image show the text the prompt asks for, as PP-OCR reads it.

Each image is rounded to 8 bits and read by RapidOCR (PaddleOCR's PP-OCRv4 text detector,
direction classifier and recogniser as ONNX models, shipped inside the
``rapidocr-onnxruntime`` wheel, so it runs with its real weights offline). The pieces of text
it finds, in its reading order (top to bottom, left to right), are joined by spaces, and

    r = 1 − Levenshtein(read, target) / max(len(read), len(target))       (in [0, 1])

with ``target`` the quoted text of the prompt, or the ``target`` option for every image
(``draft_rewards_ocr.text``). The engine is a black box: the reward declares
``differentiable = False``, so only the policy-gradient estimators (ddpo, grpo) train on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from draft_core.errors import ModelLoadError
from draft_core.rewarding.checks import check_image_batch
from draft_rewards_ocr.text import edit_similarity, requested_text

_ENGINES: dict[tuple, Any] = {}


def _engine(detect_side: int, threads: int, min_confidence: float):
    """One RapidOCR engine per setting and process (loading its three ONNX models takes ~1 s)."""
    key = (detect_side, threads, min_confidence)
    if key not in _ENGINES:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise ModelLoadError(
                f"ocr: the OCR engine could not be imported ({exc}). It comes with the plugin's"
                " dependencies: `pip install rapidocr-onnxruntime` (its wheel holds the PP-OCR models)."
            ) from exc
        # limit_type "min" scales the shorter side to detect_side (up or down): a 32-pixel
        # digit and a 512-pixel render are both seen at a size the detector was trained for.
        _ENGINES[key] = RapidOCR(
            det_limit_type="min",
            det_limit_side_len=detect_side,
            text_score=min_confidence,
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
        )
    return _ENGINES[key]


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ocr: {what} must be a positive integer, got {value!r}.")
    return value


def with_margin(images: torch.Tensor, margin: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 3, H + 2m, W + 2m], framed in each image's mean border colour."""
    if margin == 0:
        return images
    ring = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    framed = ring.mean(dim=-1)[..., None, None].expand(
        -1, -1, images.shape[2] + 2 * margin, images.shape[3] + 2 * margin
    )
    framed = framed.clone()
    framed[..., margin:-margin, margin:-margin] = images
    return framed


class OCRReward:
    """r [B] = edit similarity between the text PP-OCR reads in each image and the text asked for.

    target: the text every image should show; None (default) takes each prompt's quoted text
    (``a sign that says "OPEN"``), and a prompt without quotes is an error. case_sensitive
    (default False) and ignore_spaces (default True): how texts are compared. min_confidence:
    readings the recogniser scores below this are dropped (RapidOCR's text_score, 0.5).
    detect_side: the detector sees the image with its shorter side scaled to this many pixels
    (default 128: enough for a few words; raise it for small print in a large image). threads:
    ONNX Runtime threads (default: torch's thread count). margin: pixels of background (the mean
    colour of the image's outermost ring) added on each side before reading: the detector misses
    text that touches the edge, as in ``digits``' 32-pixel samples (0 of 100 read without a
    margin, 60 with 16: benchmarks/digits_ocr.py).
    """

    differentiable = False

    def __init__(
        self,
        target: str | None = None,
        case_sensitive: bool = False,
        ignore_spaces: bool = True,
        min_confidence: float = 0.5,
        detect_side: int = 128,
        threads: int | None = None,
        margin: int = 0,
    ) -> None:
        if isinstance(target, int) and not isinstance(target, bool):
            target = str(target)  # YAML and `--reward ocr:target=3` read a bare 3 as a number: its digits are the text
        if target is not None and not isinstance(target, str):
            raise ValueError(
                f"ocr: target must be a string or a whole number (the text the images should show), got {target!r}."
            )
        for name, value in (("case_sensitive", case_sensitive), ("ignore_spaces", ignore_spaces)):
            if not isinstance(value, bool):
                raise ValueError(f"ocr: {name} must be true or false, got {value!r}.")
        if (
            isinstance(min_confidence, bool)
            or not isinstance(min_confidence, (int, float))
            or not 0 <= min_confidence < 1
        ):
            raise ValueError(f"ocr: min_confidence must be a number in [0, 1), got {min_confidence!r}.")
        self.target = target
        self.case_sensitive, self.ignore_spaces = case_sensitive, ignore_spaces
        self.min_confidence = float(min_confidence)
        self.detect_side = _positive_int(detect_side, "detect_side")
        self.threads = _positive_int(threads if threads is not None else torch.get_num_threads(), "threads")
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
            raise ValueError(f"ocr: margin must be a whole number of pixels >= 0, got {margin!r}.")
        self.margin = margin

    @property
    def uses_prompts(self) -> bool:
        return self.target is None

    def check_available(self) -> None:
        """The engine and its models load (they ship in the wheel; nothing is downloaded)."""
        _engine(self.detect_side, self.threads, self.min_confidence)

    def targets(self, prompts: Sequence[str], batch: int) -> list[str]:
        """The text each of ``batch`` images should show."""
        if self.target is not None:
            return [self.target] * batch
        if len(prompts) != batch:
            raise ValueError(
                f"ocr: got {batch} images but {len(prompts)} prompts; the text to read comes from each"
                " prompt's quotes, or give `target:` for every image."
            )
        found = [requested_text(p) for p in prompts]
        missing = [p for p, t in zip(prompts, found) if t is None]
        if missing:
            raise ValueError(
                f"ocr: the prompt {missing[0]!r} quotes no text to read. Put the text in quotes"
                ' (a sign that says "OPEN") or give the reward a `target:` string.'
            )
        return found  # type: ignore[return-value]

    def read(self, images: torch.Tensor) -> list[str]:
        """What PP-OCR reads in each image [B, 3, H, W] in [0, 1] ('' where it finds no text)."""
        check_image_batch(images, "ocr")
        engine = _engine(self.detect_side, self.threads, self.min_confidence)
        pixels = (with_margin(images.detach().float(), self.margin) * 255).round().clamp(0, 255).to(torch.uint8)
        # RapidOCR takes arrays in OpenCV's BGR order, as PaddleOCR's models were trained.
        arrays = pixels.permute(0, 2, 3, 1).flip(-1).cpu().numpy()
        texts = []
        for array in arrays:
            found, _ = engine(np.ascontiguousarray(array))
            texts.append(" ".join(line[1] for line in found) if found else "")
        return texts

    def __call__(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1]. Returns [B] float32 in [0, 1] on the images' device, no graph."""
        targets = self.targets(prompts, images.shape[0])
        reads = self.read(images)
        scores = [
            edit_similarity(r, t, case_sensitive=self.case_sensitive, ignore_spaces=self.ignore_spaces)
            for r, t in zip(reads, targets)
        ]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def __repr__(self) -> str:
        return (
            f"OCRReward(target={self.target!r}, case_sensitive={self.case_sensitive},"
            f" ignore_spaces={self.ignore_spaces}, detect_side={self.detect_side}, margin={self.margin})"
        )
