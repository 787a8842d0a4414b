"""Pytest fixtures shared by the core's and the plugin distributions' tests.

A ``conftest.py`` takes them by importing them (``from draft_core.testing.fixtures import
one_thread, plugin_env``): both are autouse.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread: the tiny test models gain nothing from two, and on a shared 2-core
    machine two threads spin-wait against any neighbour (tens of times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def plugin_env(monkeypatch):
    """Every installed plugin loads, whatever DRAFT_PLUGINS / DRAFT_STRICT_PLUGINS the caller's shell sets."""
    monkeypatch.delenv("DRAFT_PLUGINS", raising=False)
    monkeypatch.delenv("DRAFT_STRICT_PLUGINS", raising=False)
