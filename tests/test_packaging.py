"""Packaging: every pyproject in the repository installs without deprecation warnings to read."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = [ROOT / "pyproject.toml", *sorted((ROOT / "plugins").glob("*/pyproject.toml"))]


@pytest.mark.parametrize("path", PYPROJECTS, ids=lambda p: p.parent.name)
def test_license_is_an_spdx_string(path):
    """setuptools deprecates ``license = {text = ...}`` and prints a page about it at every install."""
    data = tomllib.loads(path.read_text())
    assert isinstance(data["project"]["license"], str), data["project"]["license"]
    requires = data["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in requires), requires  # SPDX strings need 77


def test_package_data_exists():
    """Every package-data pattern of the core matches files (moved folders would silently ship nothing)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package, patterns in data["tool"]["setuptools"]["package-data"].items():
        for pattern in patterns:
            assert list((ROOT / package).glob(pattern)), f"{package}/{pattern} matches nothing"
