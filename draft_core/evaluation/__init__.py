"""Evaluation: ways to generate an image for a prompt (``baselines``: plain sampling and the paper's
baselines) and the table of rewards per configuration (``evaluate``, the paper's Table 2)."""

from draft_core.evaluation.evaluate import (
    EvalResult,
    PromptItem,
    RowResult,
    RowSpec,
    evaluate,
    item_seed,
    load_prompt_set,
    sheet_prompts,
    to_json,
    to_markdown,
    to_records,
    write_outputs,
)

__all__ = [
    "EvalResult",
    "PromptItem",
    "RowResult",
    "RowSpec",
    "evaluate",
    "item_seed",
    "load_prompt_set",
    "sheet_prompts",
    "to_json",
    "to_markdown",
    "to_records",
    "write_outputs",
]
