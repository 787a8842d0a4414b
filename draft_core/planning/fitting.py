"""Changes that bring a config's predicted peak under a memory budget, each traced, cheapest first.

Candidates, in the order they are preferred (each is a list of ``--set`` overrides, and each
is predicted by tracing the changed config, never by a formula):

1. ``same result`` (costs time): gradient checkpointing of the denoiser block by block
   (``train.checkpoint_denoiser=blocks``), of the VAE decode and of the reward model
   (``train.checkpoint_decode`` / ``train.checkpoint_reward``) where ``auto`` leaves them off,
   and of DRaFT-K's differentiable UNet steps where it is off (``estimator.checkpoint``: by
   default on only for K > 1); the text encoders off the device
   (``model.offload_text_encoders=true``: no time with cached embeddings, some when prompts
   are encoded off the device); all of them at once: the same numbers, more compute.
2. ``same estimator``: a smaller micro-batch with gradient accumulation. The runner draws
   ``train.batch_size`` samples per micro-step and accumulates ``train.grad_accum`` of them, so
   ``batch_size=B/m, grad_accum=G*m`` keeps the B*G samples behind each update.
3. ``lower precision`` (may cost quality): the reward network in bfloat16 (its ``dtype``
   argument), then the frozen base quantized (``model.quantize``: int8, fp8 on CUDA, then nf4,
   which costs the most precision and so comes last).
4. ``another estimator``: a smaller K for DRaFT-K or full DRaFT, DRaFT-LV (n=2) instead of
   DRaFT-K with K > 1, fewer re-noised copies for DRaFT-LV.

Within a kind, the listed order (``Proposal.order``), then the lower predicted step cost (FLOP
ratio to sampling alone) comes first. When
no single change fits, changes are combined in that order until one combination does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from draft_core.config import Config, load_config
from draft_core.planning.architectures import PlanError
from draft_core.planning.budget import format_bytes
from draft_core.planning.step import StepTrace, plan_step, reward_sections, takes_dtype

KINDS = ("same result", "same estimator", "lower precision", "another estimator")
#: what each kind costs, as ``draft plan`` says it.
KIND_COSTS = {
    "same result": "costs time",
    "same estimator": "costs time",
    "lower precision": "may cost quality",
    "another estimator": "changes the estimator, may cost quality",
}
CHECKPOINT_KEYS = {"checkpoint_decode": "checkpoint the VAE decode", "checkpoint_reward": "checkpoint the reward model"}
QUANTIZE_ORDER = ("int8", "fp8", "nf4")  # the least precision lost first
K_LADDER = (25, 10, 5, 2, 1)


@dataclass
class Proposal:
    label: str
    overrides: list[str]
    kind: str
    trace: StepTrace | None = None
    order: int = 0  # within a kind, before the step cost (quantization: the least precision lost first)

    @property
    def peak(self) -> int:
        return self.trace.peak

    def fits(self, budget: int) -> bool:
        return self.trace is not None and self.trace.peak <= budget

    def describe(self) -> str:
        return f"{self.label} (--set {' --set '.join(self.overrides)})"


def train_fields() -> set[str]:
    from draft_core.config.schema import TrainSection

    return {f.name for f in dataclasses.fields(TrainSection)}


def candidates(config: Config, device_type: str = "cuda") -> list[Proposal]:
    """Every single change this config admits (see the module doc), untraced."""
    out: list[Proposal] = []
    fields = train_fields()
    # "auto" is on only where the saving matters (draft_core.memory): the plan says whether it does
    ckpt = [k for k in CHECKPOINT_KEYS if k in fields and getattr(config.train, k) is not True]
    for key in ckpt:
        out.append(Proposal(CHECKPOINT_KEYS[key], [f"train.{key}=true"], KINDS[0]))
    if len(ckpt) > 1:
        out.append(
            Proposal("checkpoint the VAE decode and the reward model", [f"train.{k}=true" for k in ckpt], KINDS[0])
        )
    same: list[str] = [f"train.{k}=true" for k in ckpt]
    if config.train.checkpoint_denoiser != "blocks":
        out.append(Proposal("checkpoint the denoiser block by block", ["train.checkpoint_denoiser=blocks"], KINDS[0]))
        same.append("train.checkpoint_denoiser=blocks")
    if config.model.offload_text_encoders is not True:
        out.append(Proposal("text encoders off the device", ["model.offload_text_encoders=true"], KINDS[0]))
        same.append("model.offload_text_encoders=true")
    if len(same) > 1:
        out.append(Proposal("every checkpointing and the text encoders off the device", same, KINDS[0]))
    est, steps = config.estimator, int(config.sampler.get("steps", 50))
    if est.get("name") in ("draft", "draft-k"):
        largest_k = (
            steps if est["name"] == "draft" else (est["k_range"][1] if est.get("k_range") else est.get("k", 1) or steps)
        )
        # the estimator's default (K > 1); ``auto`` keeps it only where the pixels matter (draft_core.memory),
        # which the traced proposal shows
        default = largest_k > 1 and config.train.checkpoint_denoiser != "auto"
        on = est.get("checkpoint") if est.get("checkpoint") is not None else default
        if not on:
            out.append(Proposal("checkpoint the differentiable UNet steps", ["estimator.checkpoint=true"], KINDS[0]))
    B, G = config.train.batch_size, config.train.grad_accum
    for m in range(2, B + 1):
        if B % m == 0:
            out.append(
                Proposal(
                    f"micro-batches of {B // m} x {G * m} ({B * G} samples per update, as now)",
                    [f"train.batch_size={B // m}", f"train.grad_accum={G * m}"],
                    KINDS[1],
                )
            )
    out += _bf16_rewards(config, device_type)
    if config.model.quantize == "none":
        for i, scheme in enumerate(QUANTIZE_ORDER):
            if scheme != "fp8" or device_type == "cuda":
                out.append(
                    Proposal(f"frozen base quantized ({scheme})", [f"model.quantize={scheme}"], KINDS[2], order=i + 1)
                )
    out += _estimator_changes(config)
    return out


def _bf16_rewards(config: Config, device_type: str) -> list[Proposal]:
    sets = []
    for name, section, key in reward_sections(config):
        dtype = section.get("dtype", "auto")
        if dtype == "auto":
            dtype = "bfloat16" if device_type == "cuda" else "float32"  # as the reward resolves it there
        if dtype not in ("bfloat16", "float16") and takes_dtype(name):
            sets.append(f"{key}=bfloat16")
    return [Proposal("reward model in bfloat16", sets, KINDS[2])] if sets else []


def _estimator_changes(config: Config) -> list[Proposal]:
    from draft_core.plugins import load_registry

    est = dict(config.estimator)
    name = est.get("name")
    steps = int(config.sampler.get("steps", 50))
    wrappers = [
        f"estimator.{k}={_yaml(v)}" for k, v in est.items() if k != "name" and k in load_registry().names("estimator")
    ]  # e.g. kl: kept as it is
    out = []
    if name in ("draft", "draft-k"):
        if name == "draft":
            k = steps
        else:
            k = est["k_range"][1] if est.get("k_range") else (est.get("k", 1) or steps)
        drop = ["estimator.k_range=null"] if est.get("k_range") else []
        for small in K_LADDER:
            if small < k and small <= steps:
                out.append(
                    Proposal(
                        f"DRaFT-K, K={small} (instead of {'full DRaFT' if name == 'draft' else f'K={k}'})",
                        ["estimator.name=draft-k", f"estimator.k={small}", *drop, *wrappers],
                        KINDS[3],
                    )
                )
        if k > 1:
            out.append(
                Proposal(
                    f"DRaFT-LV, n=2 (instead of {'full DRaFT' if name == 'draft' else f'DRaFT-K, K={k}'})",
                    ["estimator.name=draft-lv", "estimator.n=2", *wrappers],
                    KINDS[3],
                )
            )
    elif name == "draft-lv" and est.get("n", 2) > 0:
        n = est.get("n", 2)
        for small in sorted({n // 2, 0} - {n}, reverse=True):
            out.append(Proposal(f"DRaFT-LV, n={small} (instead of n={n})", [f"estimator.n={small}"], KINDS[3]))
    return out


def _yaml(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def apply(config: Config, overrides: list[str]) -> Config:
    """``config`` with ``--set`` overrides, checked as ``load_config`` checks them."""
    import tempfile
    from pathlib import Path

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return load_config(path, overrides)


def propose(
    config: Config,
    budget: int,
    device_type: str = "cuda",
    dtype: str | None = None,
    progress: Callable[[str], None] | None = None,
    processes: int = 1,
) -> list[Proposal]:
    """Every candidate traced; those that fit ``budget`` first (cheapest first), then the rest by peak.
    When no single change fits, the first combination that does is added (module doc)."""
    cache: dict[tuple, StepTrace] = {}

    def trace(p: Proposal) -> Proposal:
        key = tuple(p.overrides)
        if key not in cache:
            if progress:
                progress(f"tracing: {p.label}")
            cache[key] = plan_step(apply(config, p.overrides), device_type, dtype, processes, budget)
        p.trace = cache[key]
        return p

    single = [trace(p) for p in candidates(config, device_type)]
    if not any(p.fits(budget) for p in single):
        combined: list[str] = []
        labels: list[str] = []
        for kind in KINDS:
            # one of each kind, the change that saves most memory, added to what came before
            options = [p for p in single if p.kind == kind]
            if not options:
                continue
            best = min(options, key=lambda p: (p.peak, p.order))
            combined, labels = _merge(combined, best.overrides), labels + [best.label]
            attempt = trace(Proposal(" + ".join(labels), combined, kind))
            single.append(attempt)
            if attempt.fits(budget):
                break
    return rank(single, budget)


def _merge(base: list[str], more: list[str]) -> list[str]:
    keys = {o.split("=", 1)[0] for o in more}
    return [o for o in base if o.split("=", 1)[0] not in keys] + list(more)


def rank(proposals: list[Proposal], budget: int) -> list[Proposal]:
    fit = sorted(
        (p for p in proposals if p.fits(budget)), key=lambda p: (KINDS.index(p.kind), p.order, p.trace.cost_ratio)
    )
    rest = sorted((p for p in proposals if not p.fits(budget)), key=lambda p: p.peak)
    return fit + rest


def refusal(peak: int, budget: int, proposals: list[Proposal], what: str) -> str:
    """One paragraph: over the budget by how much, and the cheapest change that fits (or the closest)."""
    over = f"{what} predicts a peak of {format_bytes(peak)}, over the memory budget of {format_bytes(budget)}."
    fits = [p for p in proposals if p.fits(budget)]
    if fits:
        best = fits[0]
        more = f" ({len(fits) - 1} other change(s) also fit: see `draft plan`)" if len(fits) > 1 else ""
        return (
            f"{over} Cheapest change that fits: {best.describe()}, predicted peak {format_bytes(best.peak)}, "
            f"step cost {best.trace.cost_ratio:.2f}x sampling alone ({KIND_COSTS[best.kind]}){more}."
        )
    if proposals:
        best = min(proposals, key=lambda p: p.peak)
        return (
            f"{over} No change draft knows fits it: the lowest predicted peak is {format_bytes(best.peak)}, with "
            f"{best.describe()}. Give a larger budget (a bigger card), a smaller model or image size, or a "
            f"smaller LoRA rank or batch."
        )
    return f"{over} draft knows no change for this config that saves memory; give a larger budget."


def check_budget(config: Config, device_type: str, budget: int | None = None, progress=None) -> StepTrace:
    """The plan of ``config``; PlanError (with the cheapest change that fits) when it exceeds ``budget``
    (default: ``train.memory_budget``). For ``draft train``, before any weight loads."""
    from draft_core.planning.budget import parse_bytes

    if budget is None:
        budget = parse_bytes(config.train.memory_budget, "config key 'train.memory_budget'")
    if progress:
        progress(
            f"checking the plan of this config against the memory budget of {format_bytes(budget)} on {device_type}"
        )
    trace = plan_step(config, device_type, budget=budget)
    if trace.peak > budget:
        message = refusal(
            trace.peak,
            budget,
            propose(config, budget, device_type, progress=progress),
            f"On {device_type}, the plan of this config",
        )
        raise PlanError(f"{message} To train anyway: draft train --no-plan-check.")
    return trace


__all__ = [
    "CHECKPOINT_KEYS",
    "KIND_COSTS",
    "KINDS",
    "Proposal",
    "apply",
    "candidates",
    "check_budget",
    "propose",
    "rank",
    "refusal",
]
