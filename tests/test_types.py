"""The plugin contract and the trainer type-check: mypy --strict on draft_core/plugins and
draft_core/training (settings in pyproject.toml's [tool.mypy]; its cache in .mypy_cache keeps
a rerun to seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_plugins_and_training_type_check_strictly():
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "draft_core/plugins", "draft_core/training"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
