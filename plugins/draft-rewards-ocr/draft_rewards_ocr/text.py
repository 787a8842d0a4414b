"""The text side of the ``ocr`` reward: which text a prompt asks for, and how close a reading is.

A prompt asks for the text between its quotation marks (``a sign that says "OPEN"``); double
quotes (straight or curly) first, else single quotes that open after a space or the start and
close before a space, punctuation or the end (so "a cat's toy" asks for nothing). Several
quoted pieces are read as one text, joined by spaces, in order.

The similarity is the normalised Levenshtein similarity 1 − d(a, b) / max(|a|, |b|) (1 for
equal texts, 0 when nothing matches; two empty texts are equal), computed by rapidfuzz after
an optional normalisation: case folded and whitespace removed by default, since OCR splits
and joins words at will and an image rarely says which case it meant (Flow-GRPO's OCR reward
compares the same way).
"""

from __future__ import annotations

import re

from rapidfuzz.distance import Levenshtein

_DOUBLE = re.compile(r'"([^"]*)"|\u201c([^\u201d]*)\u201d')
_SINGLE = re.compile(r"(?:(?<=\s)|^)['\u2018]([^'\u2018\u2019]+)['\u2019](?=[\s.,;:!?)]|$)")


def requested_text(prompt: str) -> str | None:
    """The quoted text of ``prompt`` (pieces joined by a space), or None when nothing is quoted."""
    pieces = [a or b for a, b in _DOUBLE.findall(prompt)]
    if not pieces:
        pieces = _SINGLE.findall(prompt)
    if not pieces:
        return None
    return " ".join(piece.strip() for piece in pieces)


def normalise(text: str, *, case_sensitive: bool = False, ignore_spaces: bool = True) -> str:
    if not case_sensitive:
        text = text.casefold()
    if ignore_spaces:
        text = "".join(text.split())
    return text


def edit_similarity(read: str, target: str, *, case_sensitive: bool = False, ignore_spaces: bool = True) -> float:
    """1 − Levenshtein(read, target) / max(len): 1.0 for a perfect reading, 0.0 for nothing in common."""
    a = normalise(read, case_sensitive=case_sensitive, ignore_spaces=ignore_spaces)
    b = normalise(target, case_sensitive=case_sensitive, ignore_spaces=ignore_spaces)
    return float(Levenshtein.normalized_similarity(a, b))
