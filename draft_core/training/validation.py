"""Validation during training (``train.validation``): held-out prompts sampled with fixed seeds at
step 0, every ``every`` steps and at the end, scored by any registered rewards, logged as
``val/<reward>`` (the mean over every image) in that step's ``metrics.jsonl`` row, and drawn as
``samples/val-step-NNNNNN.png``. A second reward beside the training one is how reward hacking
shows while it happens: the training reward rising while the other falls.

Image j of prompt i starts from noise seeded with a hash of (seed, i, j), as ``draft eval``
seeds it, so the scores of two steps (or two runs) compare the same starting points, and a
resumed run repeats them exactly. Validation draws from none of the training's random streams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from draft_core.config.prompts import load_prompts
from draft_core.errors import ConfigError
from draft_core.evaluation.evaluate import item_seed
from draft_core.plugins.bases import as_reward
from draft_core.training.pictures import generate


@dataclass
class Validation:
    prompts: list[str]
    rewards: dict[str, Any]  # label (as in val/<label>) -> reward
    every: int
    n_per_prompt: int
    seed: int
    batch_size: int

    def due(self, step: int, last: int) -> bool:
        return step == 0 or step == last or (self.every > 0 and step % self.every == 0)

    @torch.no_grad()
    def run(self, model: Any, sampler: Any, condition: Callable[[Any], Any]) -> tuple[dict[str, float], torch.Tensor]:
        """Sample and score -> ({"val/<label>": mean score}, images [P * k, 3, H, W], a prompt's k images together)."""
        for reward in self.rewards.values():
            as_reward(reward).to(model.device)
        keys = [(i, j) for i in range(len(self.prompts)) for j in range(self.n_per_prompt)]
        scores: dict[str, list[torch.Tensor]] = {label: [] for label in self.rewards}
        images = []
        for start in range(0, len(keys), self.batch_size):
            batch = keys[start : start + self.batch_size]
            prompts = [self.prompts[i] for i, _ in batch]
            noise = torch.cat(
                [model.make_noise(1, torch.Generator().manual_seed(item_seed(self.seed, i, j))) for i, j in batch]
            )
            generator = torch.Generator().manual_seed(
                item_seed(self.seed, *batch[0]) ^ 0x5EED
            )  # stochastic samplers' steps
            made = generate(model, sampler, condition, prompts, noise, generator, len(batch))
            for label, reward in self.rewards.items():
                scores[label].append(reward(made.to(model.device), prompts).detach().float().cpu())
            images.append(made)
        return {f"val/{label}": torch.cat(s).mean().item() for label, s in scores.items()}, torch.cat(images)


def build_validation(
    config: Any, registry: Any, training_reward: Any, build_reward: Callable[..., Any]
) -> Validation | None:
    """The config's ``train.validation`` with its rewards built (None while its prompts are null).

    ``build_reward(section, registry)`` builds a reward section ({name, **arguments}); passed in
    rather than imported, so this module and the components module do not import each other.
    """
    section = config.train.validation
    if section.prompts is None:
        return None
    source, items = (section.prompts, None) if isinstance(section.prompts, str) else ("validation", section.prompts)
    if items is not None and not items:
        raise ConfigError(
            "config key 'train.validation.prompts' is an empty list; give prompts, a prompt list name or file, or null."
        )
    try:
        prompts = load_prompts(source, items, config.prompts.template)
    except ConfigError as exc:  # the same checks as the training prompts', under this key
        raise ConfigError(str(exc).replace("prompts.source", "train.validation.prompts")) from None
    rewards: dict[str, Any] = {}
    if not section.rewards:  # the training reward, under its name
        label = config.reward.get("name") or "reward"
        rewards[label] = training_reward
    for k, spec in enumerate(section.rewards):
        key = f"train.validation.rewards[{k}]"
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or set(spec) - {"name", "args", "label"}:
            raise ConfigError(
                f"config key '{key}' is {spec!r}; give a registered reward's name, or a mapping with 'name' and optionally "
                f"'args' (its arguments) and 'label' (the name in val/<label>), e.g. {{name: digit-classifier, args: {{target: 3}}}}."
            )
        args = spec.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"config key '{key}.args' must map argument names to values, got {args!r}.")
        label = str(spec.get("label") or spec["name"])
        if label in rewards:
            raise ConfigError(
                f"config key '{key}': the label '{label}' is already used by another validation reward; give each a "
                f"distinct 'label' (it names the val/<label> column)."
            )
        rewards[label] = build_reward({"name": spec["name"], **args}, registry)
    return Validation(prompts, rewards, section.every, section.n_per_prompt, section.seed, section.batch_size)
