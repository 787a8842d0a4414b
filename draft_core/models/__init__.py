"""Model loading: embedded models, local diffusers folders, hub ids."""

from draft_core.models.loading import EMBEDDED, load_model
from draft_core.models.pipeline import DiffusionModel

__all__ = ["DiffusionModel", "EMBEDDED", "load_model"]
