"""Keeping the user's local paths out of what is shared: relative paths where they do the job, redaction where not.

- ``local_path``: how a path is written into a model card, PNG metadata or a kohya file's metadata: relative
  to the working folder when it lies under it, ``~/...`` under the home folder, else as it is.
- ``redact_staged``: the pass ``draft lora push`` makes over its staged folder before anything is uploaded.
  In every text file (model card, config.yaml, report.html), every PNG's text chunks and every safetensors
  file's metadata, a path inside the run folder becomes relative to it, the home folder becomes ``~``, and any
  other absolute path on this machine becomes ``<local>/NAME``. It returns what it changed, to be shown.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from draft_core.errors import DraftError

TEXT_SUFFIXES = (".md", ".yaml", ".yml", ".html", ".json", ".txt")
# An absolute POSIX path of two or more parts, not inside a URL or a longer word ('/g' in '</g>' is not one).
_ABSOLUTE = re.compile(r"(?<![\w.:/~<>-])/(?:[\w.+@%-]+/)+[\w.+@%-]*[\w+@%-]")


def local_path(path: str | Path) -> str:
    """``path`` as it may be written into a shared file: relative to the working folder or ``~/...``."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    for base, shown in ((Path.cwd(), None), (Path.home(), "~")):
        for candidate, root in ((p, base), (p.resolve(), base.resolve())):
            if str(root) != root.anchor:
                try:
                    rel = candidate.relative_to(root)
                except ValueError:
                    continue
                return str(rel) if shown is None else (f"~/{rel}" if str(rel) != "." else "~")
    return str(p)


def _roots(run_dir: Path) -> list[tuple[str, str]]:
    """(absolute prefix, replacement) pairs, the longest first: the run folder, then the home folder."""
    pairs = []
    for root, shown in ((run_dir, ""), (Path.home(), "~/")):
        for variant in {str(root.absolute()), str(root.resolve())}:
            if variant != os.sep:
                pairs.append((variant.rstrip(os.sep), shown))
    return sorted(pairs, key=lambda p: -len(p[0]))


def redact_text(text: str, run_dir: Path) -> tuple[str, int]:
    """(``text`` with local absolute paths made relative or redacted, how many were changed)."""
    count = 0

    def root_sub(prefix: str, shown: str, name: str):
        def sub(m: re.Match) -> str:
            nonlocal count
            count += 1
            if m.group(1):  # a path inside: relative to the root
                return shown + m.group(1)[1:]
            return "~" if shown else name

        return re.compile(re.escape(prefix) + r"(/[^\s'\"<>)\]`]*)?(?![\w.-])"), sub

    for prefix, shown in _roots(run_dir):
        pattern, sub = root_sub(prefix, shown, run_dir.name)
        text = pattern.sub(sub, text)

    def other(m: re.Match) -> str:
        nonlocal count
        path = m.group(0)
        first = path.split("/")[1]
        if not first or not Path("/", first).is_dir():
            return path  # not a path on this machine (a URL path, markup)
        count += 1
        return f"<local>/{path.rstrip('/').rsplit('/', 1)[-1]}"

    return _ABSOLUTE.sub(other, text), count


def _redact_png(path: Path, run_dir: Path) -> int:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(path) as image:
        image.load()
        chunks = dict(getattr(image, "text", {}) or {})
        changed, info = 0, PngInfo()
        for key, value in chunks.items():
            new, n = redact_text(value, run_dir)
            changed += n
            info.add_text(key, new)
        if changed:
            image.save(path, pnginfo=info)
    return changed


def _redact_safetensors(path: Path, run_dir: Path) -> int:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata() or {})
        changed, new = 0, {}
        for key, value in metadata.items():
            new[key], n = redact_text(value, run_dir)
            changed += n
        if not changed:
            return 0
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata=new)
    return changed


def redact_staged(folder: Path, run_dir: Path) -> list[str]:
    """Make every local absolute path in the staged ``folder`` relative to ``run_dir`` or redacted; one line
    per file changed. DraftError if an absolute path of the run or home folder is left anywhere."""
    changes = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            text, n = redact_text(path.read_text(encoding="utf-8"), run_dir)
            if n:
                path.write_text(text, encoding="utf-8")
        elif suffix == ".png":
            n = _redact_png(path, run_dir)
        elif suffix == ".safetensors":
            n = _redact_safetensors(path, run_dir)
        else:
            continue
        if n:
            changes.append(
                f"{path.relative_to(folder).as_posix()}: {n} local path(s) made relative to the run folder or redacted"
            )
    leaks = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and _leaks(p, run_dir)]
    if leaks:
        raise DraftError(
            f"the staged files {', '.join(leaks)} in {folder} still hold an absolute path of this machine after "
            f"redaction, so nothing was uploaded. Remove the path from the run's files (or report this as a bug)."
        )
    return changes


def _leaks(path: Path, run_dir: Path) -> bool:
    data = path.read_bytes()
    return any(re.search(re.escape(prefix.encode()) + rb"(?![\w.-])", data) for prefix, _ in _roots(run_dir))
