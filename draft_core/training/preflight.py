"""Checks a run passes before its folder is created (and in ``draft train --dry-run``): the model
exists and is of a supported class, and every reward that loads weights finds them.

A reward opts in with an optional method, ``check_available()``: cheap (it looks for files, in
the Hugging Face cache or at a configured path, and loads nothing), returning None when its
weights can be found and raising a ``DraftError`` (such as ``ModelLoadError``) that names what is
missing and how to provide it otherwise. Rewards without the method are not checked here.
"""

from __future__ import annotations

from typing import Any

from draft_core.config import Config
from draft_core.errors import DraftError
from draft_core.plugins.bases import as_reward
from draft_core.rewarding.weighted import WeightedReward


def check_rewards_available(components: Any) -> None:
    """Call ``check_available()`` of every reward term that has one."""
    for term, source in components.sources:
        inner = [r for r, _ in term.terms.values()] if isinstance(term, WeightedReward) else [term]
        for reward in inner:
            try:
                as_reward(reward).check_available()
            except DraftError:
                raise
            except Exception as exc:  # a plugin's own bug: say whose
                raise DraftError(
                    f"{source.describe()}: its check_available() raised {type(exc).__name__}: {exc}"
                ) from exc


def check_ready(config: Config, components: Any) -> None:
    """Everything about a run checkable without loading weights: the model, then the rewards' weights."""
    from draft_core.models.loading import check_model

    family = check_model(config.model.name, config.model.revision, config.model.family)
    check_family(config, components, family)
    check_lora_files(family)
    check_rewards_available(components)


def check_lora_files(family: Any) -> None:
    """The family can write and read its LoRA files (its ``lora_file_problem`` hook), before any step runs."""
    from draft_core.models.family import ModelFamily

    if isinstance(family, type) and issubclass(family, ModelFamily) and (problem := family.lora_file_problem()):
        raise DraftError(problem)


def check_family(config: Config, components: Any, family: Any) -> None:
    """The config's sampler, LoRA targets and learned sampling suit the model's family (``family``: its
    class, from ``check_model``). One paragraph naming what was found and what is accepted."""
    from draft_core.config.resolve import check_sampler_family
    from draft_core.models.family import ModelFamily

    if not (isinstance(family, type) and issubclass(family, ModelFamily)):
        return  # a plugin family that does not build on ModelFamily declares nothing to check
    check_sampler_family(
        family, str(config.sampler.get("name")), getattr(components.sampler, "flow_matching", None), config.model.name
    )
    targets = config.lora.targets
    if isinstance(targets, str) and targets != "default" and targets not in family.lora_target_sets:
        raise DraftError(
            f"lora.targets '{targets}' is not a named set of the '{family.family}' family (model "
            f"'{config.model.name}'); its sets are default ({family.default_lora_targets}), "
            f"{', '.join(sorted(family.lora_target_sets))}, or give a list of module-name suffixes."
        )
    if family.is_guidance_distilled(config.model.name, config.model.revision):
        learned = [k for k in ("guidance", "negative_prompt") if getattr(config.learn, k, False)]
        if learned:
            raise DraftError(
                f"model '{config.model.name}' is guidance-distilled ('{family.family}' family: the guidance scale is "
                f"an input of the transformer and there is no unconditional pass), so learn.{learned[0]} has "
                f"nothing to learn; drop it. sampler.guidance_scale sets the distilled guidance."
            )
