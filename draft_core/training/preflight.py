"""Checks a run passes before its folder is created (and in ``draft train --dry-run``): the model
exists and is of a supported class, and every reward that loads weights finds them.

A reward opts in with an optional method, ``check_available()``: cheap (it looks for files, in
the Hugging Face cache or at a configured path, and loads nothing), returning None when its
weights can be found and raising a ``DraftError`` (such as ``ModelLoadError``) that names what is
missing and how to provide it otherwise. Rewards without the method are not checked here.
"""

from __future__ import annotations

from draft_core.config import Config
from draft_core.errors import DraftError
from draft_core.rewarding.weighted import WeightedReward


def check_rewards_available(components) -> None:
    """Call ``check_available()`` of every reward term that has one."""
    for term, source in components.sources:
        inner = [r for r, _ in term.terms.values()] if isinstance(term, WeightedReward) else [term]
        for reward in inner:
            check = getattr(reward, "check_available", None)
            if not callable(check):
                continue
            try:
                check()
            except DraftError:
                raise
            except Exception as exc:  # a plugin's own bug: say whose
                raise DraftError(
                    f"{source.describe()}: its check_available() raised {type(exc).__name__}: {exc}"
                ) from exc


def check_ready(config: Config, components) -> None:
    """Everything about a run checkable without loading weights: the model, then the rewards' weights."""
    from draft_core.models.loading import check_model

    check_model(config.model.name, config.model.revision)
    check_rewards_available(components)
