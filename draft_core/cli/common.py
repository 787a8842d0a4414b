"""Helpers every ``draft`` command shares: quiet libraries, ``--lora-steps`` windows, learned sampler
hyperparameters saved beside a LoRA, the sampler to sample with, and loading a model for sampling."""

from __future__ import annotations

import argparse
import sys

from draft_core.errors import DraftError


def quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def parse_window(text: str | None, steps: int) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        fields = text.split(":")
        if len(fields) != 2:
            raise ValueError(text)
        start, end = (int(v) if v else d for v, d in zip(fields, (0, steps)))
    except ValueError:
        raise DraftError(
            f"--lora-steps '{text}' must be START:END step indices (e.g. 0:20 or 30:), with 0 <= START <= END <= {steps}."
        ) from None
    if not 0 <= start <= end <= steps:
        raise DraftError(
            f"--lora-steps '{text}' is outside 0..{steps}; give START:END with 0 <= START <= END <= {steps}."
        )
    return start, end


def learned_sampling(specs, model, sampler):
    """The learned guidance schedule / negative prompt saved beside the first LoRA that has them."""
    from draft_core.training.learned_sampling import LearnedSampling

    found = [(s, LearnedSampling.load(s.folder, model.device)) for s in specs]
    found = [(s, learned) for s, learned in found if learned is not None]
    if not found:
        return None
    spec, learned = found[0]
    learned.attach(sampler)
    parts = [
        p
        for p, on in (("guidance schedule", learned.guidance), ("negative prompt", learned.negative))
        if on is not None
    ]
    note = f" (ignoring those of {len(found) - 1} other LoRA(s))" if len(found) > 1 else ""
    print(
        f"using the learned {' and '.join(parts)} from {spec.path}{note}; --no-learned-sampling turns them off",
        file=sys.stderr,
    )
    return learned


def resolve_device(text: str):
    """``--device``: auto (CUDA when available, else the CPU), cpu, cuda, cuda:N or mps, checked to exist here."""
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise DraftError(f"--device '{text}' is not a device; give auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DraftError(f"--device {text}: CUDA is not available here; use --device cpu (or auto).")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DraftError(
                f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DraftError(f"--device {text}: MPS (Apple GPU) is not available here; use --device cpu (or auto).")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DraftError(f"--device '{text}': draft runs on cpu, cuda or mps, not {device.type}.")
    return device


def load_for_sampling(args: argparse.Namespace):
    """The model of ``--model`` on ``--device`` in ``--dtype`` (as ``draft sample`` loads it)."""
    from draft_core.models.loading import load_model, resolve_dtype

    quiet_libraries()
    model = load_model(args.model, resolve_device(args.device))
    if args.dtype != "auto":
        model.to(dtype=resolve_dtype(args.dtype, model.device))
    return model


def sampler_for(args: argparse.Namespace, specs, registry=None):
    """(the resolved sampler section, the built sampler) for ``--model``: ``--sampler``, ``--steps`` and
    ``--guidance`` as given, else the steps and guidance of the run that trained the first ``--lora``
    (its config.yaml), else the model's defaults (draft_core.config.resolve). A sampler of the wrong kind
    for the model is refused here, before any weights load. Reads model_index.json only."""
    from draft_core.config.resolve import sampling_for
    from draft_core.plugins import load_registry

    registry = registry or load_registry()
    section = sampling_for(
        args.model, sampler=args.sampler, steps=args.steps, guidance=args.guidance, loras=specs, registry=registry
    )
    name = section["name"]
    return section, registry.build("sampler", name, **{k: v for k, v in section.items() if k != "name"})
