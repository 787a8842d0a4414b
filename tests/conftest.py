"""Shared fixtures for the core's tests."""

from __future__ import annotations

import pytest

import draft_core.models
import draft_core.models.loading
from draft_core.models.pipeline import DiffusionModel
from draft_core.testing.fixtures import one_thread, plugin_env  # noqa: F401  (autouse fixtures)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything loads or builds a diffusion model."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input error was reported")

    monkeypatch.setattr(draft_core.models.loading, "load_model", refuse)
    monkeypatch.setattr(draft_core.models, "load_model", refuse)
    monkeypatch.setattr(DiffusionModel, "__init__", refuse)


def pytest_addoption(parser):
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="longer fuzz walls (tests/test_fuzz_*.py: ten times the Hypothesis examples)",
    )


def pytest_configure(config):
    import os

    if config.getoption("--slow", default=False):
        os.environ["DRAFT_FUZZ_SLOW"] = "1"
