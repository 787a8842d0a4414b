"""The suite's thread count: one intra-op thread unless DRAFT_TEST_THREADS asks for more."""

from __future__ import annotations

import pytest
import torch

from draft_core.testing.fixtures import THREADS_VARIABLE, suite_threads


def test_the_suite_runs_on_the_thread_count_it_was_asked_for():
    assert torch.get_num_threads() == suite_threads()


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    assert suite_threads() == 1
    monkeypatch.setenv(THREADS_VARIABLE, "2")
    assert suite_threads() == 2
    for bad in ("0", "two", "-1", ""):
        monkeypatch.setenv(THREADS_VARIABLE, bad)
        with pytest.raises(pytest.UsageError, match=f"{THREADS_VARIABLE}='{bad}': expected a positive whole number"):
            suite_threads()
