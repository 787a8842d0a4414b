"""Reading config YAML: the loader (1e-3 is a float; a key given twice is refused) and the shipped presets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from draft_core.config.unique_keys import UniqueKeyLoader
from draft_core.errors import ConfigError, did_you_mean

PRESETS_DIR = Path(__file__).parent / "presets"


class _Loader(UniqueKeyLoader):
    """SafeLoader that also reads 1e-3 and 4e-4 as floats (YAML 1.2; PyYAML's 1.1 rule wants a dot) and
    refuses a key given twice (naming both lines)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config '{path}' is a folder; give a YAML file (or --resume {path} to continue a run).")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 YAML."
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, got {type(data).__name__}.")
    return data


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset '{name}'. Presets: {', '.join(names)}.{did_you_mean(name, names)}")
    return path
