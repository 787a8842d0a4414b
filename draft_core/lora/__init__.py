"""LoRA: peft adapters on the denoiser (``adapters``), files to share (``files``: mix, kohya export, fuse), applying ``--lora`` files
(``loading``) and model cards (``card``)."""

from draft_core.lora.adapters import (
    ADAPTER,
    DEFAULT_TARGETS,
    TARGET_SETS,
    WEIGHT_NAME,
    LoraSpec,
    adapters_enabled,
    add_lora,
    load_lora_state,
    lora_config_dict,
    lora_parameters,
    lora_state,
    save_lora,
)
from draft_core.lora.loading import apply_loras

__all__ = [
    "ADAPTER",
    "DEFAULT_TARGETS",
    "TARGET_SETS",
    "WEIGHT_NAME",
    "LoraSpec",
    "adapters_enabled",
    "add_lora",
    "apply_loras",
    "load_lora_state",
    "lora_config_dict",
    "lora_parameters",
    "lora_state",
    "save_lora",
]
