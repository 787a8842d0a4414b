"""Range checks on the sampler section, at config time (before any model loads); the schema's own keys
carry their checks beside their fields (``schema``, ``fields.key``).

``schema.value_problems`` calls ``range_problems``; each problem is one sentence naming the key, the value
and what is accepted. The sampler's step count is checked against the model's training schedule
(``num_train_timesteps`` of its scheduler config), which diffusers' ``set_timesteps`` would otherwise
refuse with a traceback once the model has loaded.
"""

from __future__ import annotations

from typing import Any

SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes seeds in [0, 2**64) (negatives wrap; refused here)


def range_problems(c: Any) -> list[str]:
    """What is out of range in the config ``c``'s sampler section (a ``schema.Config``): its keys are the
    sampler's arguments, not fields of the schema, and its step count depends on the model."""
    sampler = c.sampler if isinstance(c.sampler, dict) else {}
    problems = []
    steps = sampler.get("steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1:
        limit = train_timesteps(c.model.name, c.model.revision)
        if limit is not None and steps > limit:
            problems.append(
                f"config key 'sampler.steps' is {steps}, more than the {limit} timesteps model '{c.model.name}' was "
                f"trained on (its scheduler's num_train_timesteps); give 1 to {limit} (the paper samples 50)."
            )
    eta = sampler.get("eta")  # DDIM's eta interpolates between deterministic (0) and DDPM's variance (1)
    if (
        sampler.get("name") == "ddim"
        and isinstance(eta, (int, float))
        and not isinstance(eta, bool)
        and not 0 <= eta <= 1
    ):
        problems.append(
            f"config key 'sampler.eta' must be in [0, 1] (0: deterministic, 1: DDPM-like noise), got {eta}."
        )
    guidance = sampler.get("guidance_scale")
    if isinstance(guidance, (int, float)) and not isinstance(guidance, bool) and not 0 <= guidance < float("inf"):
        problems.append(
            f"config key 'sampler.guidance_scale' must be a finite number >= 0 (1: no guidance; the paper uses 7.5), got {guidance}."
        )
    return problems


def train_timesteps(name: str, revision: str | None = None) -> int | None:
    """``num_train_timesteps`` of the model's scheduler config (diffusers' default, 1000, when the config omits
    it), read without loading weights; None when it cannot be known here (a hub id not in the cache)."""
    import json
    from pathlib import Path

    from draft_core.models.loading import EMBEDDED, embedded_scheduler_config

    if name in EMBEDDED:
        config = embedded_scheduler_config(name)
    else:
        local = Path(name).expanduser()
        path = local / "scheduler" / "scheduler_config.json" if local.exists() else _cached(name, revision)
        try:
            config = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
        except (OSError, ValueError):
            config = None  # the model's own loading reports a damaged folder
    if not isinstance(config, dict):
        return None
    value = config.get("num_train_timesteps", 1000)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _cached(name: str, revision: str | None):
    from pathlib import Path

    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "scheduler/scheduler_config.json", revision=revision)
    except Exception:  # an id the hub would refuse: check_model reports it
        return None
    return Path(found) if isinstance(found, str) else None
