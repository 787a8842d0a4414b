"""Run configuration: the YAML schema and its checks (``schema``), resolving what a config leaves out
(``resolve``: the model family's sampler, every plugin argument), prompt sets (``prompts``) and
command-line input checks (``inputs``)."""

from draft_core.config.resolve import load_config, resolve_config, sampler_section
from draft_core.config.schema import (
    PLUGIN_SECTIONS,
    PRESETS_DIR,
    Config,
    LearnSection,
    LoraSection,
    ModelSection,
    PromptsSection,
    TrainSection,
    apply_overrides,
    check_values,
    parse_config,
    parse_override,
    plugin_kwargs,
    preset_path,
    read_yaml,
    yaml_load,
)

__all__ = [
    "PLUGIN_SECTIONS",
    "PRESETS_DIR",
    "Config",
    "LearnSection",
    "LoraSection",
    "ModelSection",
    "PromptsSection",
    "TrainSection",
    "apply_overrides",
    "check_values",
    "load_config",
    "parse_config",
    "parse_override",
    "plugin_kwargs",
    "preset_path",
    "read_yaml",
    "resolve_config",
    "sampler_section",
    "yaml_load",
]
