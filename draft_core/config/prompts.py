"""Prompt sets: built-in lists shipped with the package, text files, or explicit lists."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from draft_core.errors import ConfigError, did_you_mean

ASSETS = Path(__file__).parent / "assets"

# name -> file in assets/. "animals": the 45 common animals of DDPO's aesthetic experiments;
# "digits": the canonical prompt of each digit for the embedded ``digits`` model.
BUILTIN = {"animals": "animals.txt", "digits": "digits.txt"}


def read_prompt_file(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"prompt file '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8, one prompt per line."
        ) from None
    except OSError as exc:
        raise ConfigError(f"prompt file '{path}' cannot be read ({exc.strerror or exc}).") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def load_prompts(source: str = "animals", items: Sequence[str] | None = None, template: str = "{}") -> list[str]:
    if items:
        prompts = list(items)
    elif source in BUILTIN:
        prompts = read_prompt_file(ASSETS / BUILTIN[source])
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"prompts.source '{source}' is neither a built-in prompt list ({', '.join(sorted(BUILTIN))}) "
                f"nor an existing text file (one prompt per line).{did_you_mean(source, BUILTIN)}"
            )
        prompts = read_prompt_file(path)
    if not prompts:
        raise ConfigError(f"prompts.source '{source}' holds no prompts (every line is blank or a comment).")
    return [template.format(p) for p in prompts]
