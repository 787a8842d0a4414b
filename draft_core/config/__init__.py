"""Run configuration: the YAML schema and its checks (``schema``), prompt sets (``prompts``) and
command-line input checks (``inputs``)."""

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
    load_config,
    parse_override,
    plugin_kwargs,
    preset_path,
    read_yaml,
    yaml_load,
)

__all__ = [
    "PLUGIN_SECTIONS", "PRESETS_DIR", "Config", "LearnSection", "LoraSection", "ModelSection", "PromptsSection",
    "TrainSection", "apply_overrides", "check_values", "load_config", "parse_override", "plugin_kwargs",
    "preset_path", "read_yaml", "yaml_load",
]
