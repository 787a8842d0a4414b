"""Shared fixtures for the core's tests."""

from __future__ import annotations

import pytest
import torch

import draft_core.models
import draft_core.models.loading
from draft_core.models.pipeline import DiffusionModel


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: the tiny models gain nothing from two, and on a shared 2-core
    machine two threads spin-wait against any neighbour (tens of times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _plugin_env(monkeypatch):
    """Every installed plugin, unfiltered by the caller's environment."""
    monkeypatch.delenv("DRAFT_PLUGINS", raising=False)
    monkeypatch.delenv("DRAFT_STRICT_PLUGINS", raising=False)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything loads or builds a diffusion model."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input error was reported")

    monkeypatch.setattr(draft_core.models.loading, "load_model", refuse)
    monkeypatch.setattr(draft_core.models, "load_model", refuse)
    monkeypatch.setattr(DiffusionModel, "__init__", refuse)
