"""A test plugin for draft: registers the reward ``test-brightness`` (mean pixel value)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from draft_core import hookimpl


class Brightness:
    """reward(images [B, 3, H, W] in [0, 1], prompts) -> [B]: the mean pixel value."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, images: Any, prompts: Sequence[str]) -> Any:
        return self.scale * images.mean(dim=(1, 2, 3))


@hookimpl
def register_rewards(register):
    register("test-brightness", Brightness)
