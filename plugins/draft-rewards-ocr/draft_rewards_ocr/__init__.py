"""draft plugin: the ``ocr`` reward, how closely PP-OCR's reading of an image matches the text asked for.

Registered through the ``draft`` entry point of the ``draft-rewards-ocr`` distribution; the
OCR engine (RapidOCR, with the PP-OCR models inside its wheel) loads on the first call.
"""

from __future__ import annotations

from draft_core import hookimpl
from draft_rewards_ocr.reward import OCRReward
from draft_rewards_ocr.text import edit_similarity, requested_text

__all__ = ["OCRReward", "edit_similarity", "requested_text"]
__version__ = "0.1.0"


@hookimpl
def register_rewards(register):
    register("ocr", OCRReward)
