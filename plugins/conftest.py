"""Fixtures for the plugin distributions' tests (collected when pytest runs from the checkout)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    """As the core's tests: one intra-op thread, since the small models gain nothing from more
    and, on a shared machine, extra threads spin-wait against their neighbours."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _all_plugins(monkeypatch):
    """Every installed plugin loads, whatever DRAFT_PLUGINS the caller's shell has."""
    monkeypatch.delenv("DRAFT_PLUGINS", raising=False)
    monkeypatch.delenv("DRAFT_STRICT_PLUGINS", raising=False)
