"""The documentation site builds with ``mkdocs build --strict`` (mkdocs.yml at the root, docs/ as its
pages): a link to a missing page or anchor, or a page left out of the navigation, fails the suite.
README.md is not part of the site; its links into docs/ are checked here too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # mkdocs-material is in the test extra (scripts/setup.sh installs it): a missing one fails here, loudly
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "models" / "index.html").is_file()


def test_readme_links_point_at_files_and_headings():
    """README is read on GitHub and PyPI, outside the site: each relative link names a file of the
    repository, and a ``page.md#anchor`` link a heading of that page (mkdocs' slugs, as GitHub's)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else ROOT / "README.md"
        assert target.exists(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-") for h in headings}
            assert anchor in slugs, (link, sorted(slugs))
