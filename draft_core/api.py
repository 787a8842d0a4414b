"""The supported Python entry points: train from a config or from objects, sample, score.

    from draft_core.api import load_config, build_components, Trainer, train, load_model, sample, score

``train`` is ``load_config`` -> ``build_components`` -> ``Trainer.setup`` -> ``Trainer.train`` with
the command line's checks; the pieces are exported for a caller who wants them one by one.
``sample`` makes the images ``draft sample`` makes (the same seed gives the same images);
``score`` runs a reward over a batch of images. docs/python-api.md shows them at work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from draft_core.config import Config, load_config
from draft_core.lora import LoraSpec, apply_loras
from draft_core.models.loading import load_model
from draft_core.models.pipeline import DiffusionModel
from draft_core.plugins import load_registry
from draft_core.training.components import Components, build_components
from draft_core.training.runner import Trainer

__all__ = [
    "Components",
    "Config",
    "DiffusionModel",
    "LoraSpec",
    "Trainer",
    "apply_loras",
    "build_components",
    "generate",
    "load_config",
    "load_model",
    "load_registry",
    "sample",
    "score",
    "train",
]


def train(
    config: Config | str | Path,
    run_dir: str | Path,
    *,
    reward: Any = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    progress: bool = False,
) -> Trainer:
    """Train (or with ``resume=True`` continue) a run in ``run_dir``; returns the finished Trainer.

    config: a ``Config`` or a YAML path (``overrides`` are ``--set`` strings for a path). reward: a
    reward object (``reward(images [B,3,H,W] in [0,1], prompts) -> [B]``) instead of the config's
    reward section; the run records its class. Checks run as in ``draft train``: names and
    arguments, the model and the rewards' weights, and a new run's folder (absent or empty).
    """
    from draft_core.config.inputs import check_new_run_dir
    from draft_core.lora.card import record_command
    from draft_core.training.preflight import check_ready
    from draft_core.training.runlock import reuse_unstarted

    if not isinstance(config, Config):
        config = load_config(config, list(overrides))
    elif overrides:
        raise TypeError("overrides apply to a config file; change a Config object's fields directly.")
    run_dir = Path(run_dir)
    components = build_components(config, reward=reward)  # resolves the config in place, as the CLI does
    check_ready(config, components)
    if not resume:
        if not reuse_unstarted(run_dir):
            check_new_run_dir(run_dir)
    trainer = Trainer(config, run_dir, components, progress=progress)
    try:
        trainer.setup(resume=resume)
    except BaseException:
        if trainer.run_lock is not None:  # the run folder is free again
            trainer.run_lock.release()
        raise
    if trainer.acc.is_main_process:
        record_command(run_dir)  # the script's command line, for the model card
    trainer.train()
    return trainer


def generate(
    model,
    sampler,
    method,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    batch_size: int = 8,
    lora_steps: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Images [len(prompts), 3, H, W] in [0, 1] on the CPU, in batches; the initial noise is drawn once
    for all prompts from ``seed``, as a diffusers pipeline draws it (what ``draft sample`` does).
    sampler: a built sampler of the model's kind (a diffusion sampler on a flow-matching model is refused)."""
    from draft_core.config.resolve import check_sampler_family
    from draft_core.evaluation.baselines import NoiseSource

    check_sampler_family(
        type(model), type(sampler).__name__, getattr(sampler, "flow_matching", None), model.name or repr(model)
    )
    gen = torch.Generator().manual_seed(seed)
    noise = model.make_noise(len(prompts), gen)
    images = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            source = NoiseSource.from_generator(noise[i : i + batch_size], model, gen)
            made = method.generate(
                model, sampler, list(prompts[i : i + batch_size]), source, lora_steps=lora_steps, generator=gen
            )
            images.append(made.images.cpu())
    return torch.cat(images)


def sample(
    model: DiffusionModel | str,
    prompts: str | Sequence[str],
    *,
    n: int = 1,
    seed: int = 0,
    sampler: str | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    loras: Sequence[str | LoraSpec] = (),
    batch_size: int = 8,
) -> torch.Tensor:
    """``n`` images per prompt, [len(prompts) * n, 3, H, W] in [0, 1], prompt by prompt.

    model: a DiffusionModel or a name for ``load_model`` (embedded, folder, hub id). sampler, steps,
    guidance_scale: None takes them as ``draft sample`` does: the model family's sampler (euler for
    flow-matching models), the steps and guidance of the run that trained the first LoRA, else the
    model's (``draft_core.config.resolve``). loras: ``"PATH[:SCALE]"`` strings or LoraSpecs, mixed
    linearly; they are loaded into the model's denoiser as adapters (so a model object passed in keeps
    them). The same arguments and seed give the images ``draft sample`` writes.
    """
    from draft_core.config.resolve import sampling_for
    from draft_core.evaluation.baselines import build_method

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    specs = [s if isinstance(s, LoraSpec) else LoraSpec.parse(s) for s in loras]
    registry = load_registry()
    # Checked before any weights load (a name is looked up in its model_index.json).
    section = sampling_for(model, sampler=sampler, steps=steps, guidance=guidance_scale, loras=specs, registry=registry)
    if isinstance(model, str):
        model = load_model(model)
    if specs:
        apply_loras(model, specs, model_name=model.name or None)
    built = registry.build("sampler", section["name"], **{k: v for k, v in section.items() if k != "name"})
    expanded = [p for p in prompts for _ in range(n)]
    return generate(model, built, build_method("plain"), expanded, seed=seed, batch_size=batch_size)


def score(reward, images: torch.Tensor, prompts: str | Sequence[str] = "", *, batch_size: int = 8) -> torch.Tensor:
    """The reward of each image, [N] float32 on the CPU, without gradients.

    reward: a registered name with arguments (``"digit-classifier:target=8"``, as ``draft eval
    --reward``) or a reward object. images: [N, 3, H, W] in [0, 1]. prompts: one for all, or one per image.
    """
    from draft_core.errors import DraftError
    from draft_core.evaluation.baselines import build_reward

    if isinstance(reward, str):
        reward = build_reward(reward)
    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(images):
        raise DraftError(f"score: {len(images)} images but {len(prompts)} prompts; give one prompt, or one per image.")
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            values = reward(images[i : i + batch_size], prompts[i : i + batch_size])
            if tuple(values.shape) != (len(images[i : i + batch_size]),):
                raise DraftError(
                    f"score: the reward returned shape {list(values.shape)} for {len(images[i : i + batch_size])} images; rewards return [B]."
                )
            out.append(values.float().cpu())
    return torch.cat(out)
