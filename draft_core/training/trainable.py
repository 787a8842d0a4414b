"""What a run trains, built once in ``Trainer.setup``: the LoRA on the denoiser, the learned
sampler settings (Appendix B.12) beside it, one AdamW over both, its learning-rate schedule and
the weights' EMA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from draft_core.config import Config
from draft_core.lora import add_lora
from draft_core.training.ema import WeightsEma
from draft_core.training.learned_sampling import LearnedSampling
from draft_core.training.schedules import build_lr_scheduler


@dataclass
class Trainable:
    params: list[torch.nn.Parameter]
    learned: LearnedSampling | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    ema: WeightsEma


def build_trainable(cfg: Config, model: Any, sampler: Any) -> Trainable:
    """The LoRA (its initial A factors depend on ``train.seed`` only), the learned sampling settings
    (likewise, from ``train.seed + 1``) attached to ``sampler``, and their optimiser."""
    t = cfg.train
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        params: list[torch.nn.Parameter] = add_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets)
    groups: list[dict[str, Any]] = [{"params": params}]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed + 1)
        learned = LearnedSampling.from_config(cfg.learn, model, sampler)
    if learned is not None:  # guidance schedule / negative prompt, trained with the LoRA
        learned.attach(sampler)
        groups += learned.param_groups(t.lr, cfg.learn)
        params = params + list(learned.parameters())
    optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=(t.betas[0], t.betas[1]), weight_decay=t.weight_decay)
    return Trainable(
        params, learned, optimizer, build_lr_scheduler(optimizer, t), WeightsEma.from_config(t.ema, params)
    )
