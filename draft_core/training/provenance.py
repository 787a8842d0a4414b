"""What a run records about the reward it really trained on, when Python code supplied it.

A reward object passed to ``build_components(config, reward=...)`` or set on ``Components.reward``
is not what the config's reward section names. The run then writes, in config.yaml and the
model card, ``reward: {name: "python:<module>.<class>", repr: "<repr(reward)>"}``, so the record
says what was trained. Such a run resumes only from Python (the command line cannot rebuild the
object): ``build_components(load_config(run/"config.yaml"), reward=the_same_object)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from draft_core.config import Config
from draft_core.rewarding.spec import reward_terms
from draft_core.rewarding.weighted import WeightedReward
from draft_core.training.faults import Source

PYTHON_PREFIX = "python:"


def python_name(obj: object) -> str:
    cls = type(obj)
    return f"{PYTHON_PREFIX}{cls.__module__}.{cls.__qualname__}"


def python_source(obj: object) -> Source:
    """The Source of a reward given as a Python object (no plugin, no distribution)."""
    return Source(python_name(obj), type(obj).__module__, None, None)


def is_python_reward(section: dict[str, Any]) -> bool:
    return str(section.get("name", "")).startswith(PYTHON_PREFIX)


def _from_config(config: Config, components: Any) -> bool:
    """Whether ``components.reward`` is what ``config.reward`` describes (built from it, or the
    Python object that an earlier record of this kind names)."""
    reward = components.reward
    objects = [r for r, _ in reward.terms.values()] if isinstance(reward, WeightedReward) else [reward]
    known = {id(term) for term, _ in components.sources}
    if not all(id(o) in known for o in objects):
        return False  # replaced after build_components
    names = sorted(src.name for _, src in components.sources)
    section = config.reward
    configured = sorted(t.name for t in reward_terms(section))
    return names == configured


def recorded_config(config: Config, components: Any) -> Config:
    """``config``, with its reward section describing ``components.reward`` when that is not the config's."""
    if _from_config(config, components):
        return config
    reward = components.reward
    return dataclasses.replace(config, reward={"name": python_name(reward), "repr": repr(reward)})
