"""Pytest fixtures shared by the core's and the plugin distributions' tests.

A ``conftest.py`` takes them by importing them (``from draft_core.testing.fixtures import
one_thread, plugin_env``): both are autouse.
"""

from __future__ import annotations

import os

import pytest
import torch

# DRAFT_TEST_THREADS=N runs the suite on N intra-op threads instead of one: results that hang on
# the kernels' reduction order (which changes with the thread count) must then still pass, as they
# must on another CPU. Tests that compare runs bit for bit run them all on this same count. On a
# shared machine add OMP_WAIT_POLICY=PASSIVE (idle threads spin otherwise). Another CPU's kernels can
# be had here too: ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2.
THREADS_VARIABLE = "DRAFT_TEST_THREADS"


def suite_threads() -> int:
    """The intra-op thread count the tests run on: 1, or DRAFT_TEST_THREADS."""
    value = os.environ.get(THREADS_VARIABLE, "1")
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(
            f"{THREADS_VARIABLE}={value!r}: expected a positive whole number of threads (default 1)"
        )
    return int(value)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread (or DRAFT_TEST_THREADS): the tiny test models gain nothing from two, and
    on a shared 2-core machine two threads spin-wait against any neighbour (tens of times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(suite_threads())
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def plugin_env(monkeypatch):
    """Every installed plugin loads, whatever DRAFT_PLUGINS / DRAFT_STRICT_PLUGINS the caller's shell sets."""
    monkeypatch.delenv("DRAFT_PLUGINS", raising=False)
    monkeypatch.delenv("DRAFT_STRICT_PLUGINS", raising=False)
