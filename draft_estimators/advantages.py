"""Advantages for the policy-gradient estimators: DDPO's per-prompt statistics, GRPO's groups.

DDPO normalises each reward by the running mean and std of the rewards its prompt
received before (a per-prompt buffer), falling back to the whole batch's statistics
while a prompt has few rewards; GRPO normalises within each group of samples of one
prompt. With several processes, DDPO's statistics are taken over every process's
rewards (gathered), so every process keeps the same tracker and the advantages do not
depend on how the batch was split.

A non-finite reward (NaN or inf) never enters a prompt's history: one bad reward call
would otherwise poison that prompt's mean and std for as long as it stays in the buffer
(and in every checkpoint meanwhile). Its advantage is NaN, which the caller drops.
"""

from __future__ import annotations

import json
import math
from collections import deque

import torch

from draft_core.errors import ConfigError


class PerPromptStatTracker:
    """Running reward statistics per prompt (DDPO's per-prompt stat tracking).

    buffer_size: rewards kept per prompt (the oldest drop out); min_count: rewards a prompt
    needs before its own mean and std are used instead of the batch's.
    """

    def __init__(self, buffer_size: int = 16, min_count: int = 16) -> None:
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.stats: dict[str, deque] = {}

    def update(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        """Add ``rewards`` [N] of ``prompts`` (N strings) and return their advantages [N], float64.

        A = (r − mean) / (std + 1e-6), std the population std, as DDPO computes it. Non-finite
        rewards are not added to any history (nor to the batch's statistics); their advantages are NaN.
        """
        rewards = rewards.detach().double().cpu()
        finite = torch.isfinite(rewards)
        advantages = torch.full_like(rewards, float("nan"))
        good = rewards[finite]
        batch_mean, batch_std = good.mean(), good.std(unbiased=False)
        for prompt in sorted(set(prompts)):
            mask = torch.tensor([p == prompt for p in prompts]) & finite
            if not mask.any():
                continue
            seen = self.stats.setdefault(prompt, deque(maxlen=self.buffer_size))
            seen.extend(rewards[mask].tolist())
            if len(seen) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                values = torch.tensor(list(seen), dtype=torch.float64)
                mean, std = values.mean(), values.std(unbiased=False)
            advantages[mask] = (rewards[mask] - mean) / (std + 1e-6)
        return advantages

    def state_dict(self, prefix: str = "tracker.") -> dict[str, torch.Tensor]:
        """Tensors only: the prompts as UTF-8 JSON bytes, each prompt's rewards (oldest first, NaN-padded)."""
        if not self.stats:
            return {}
        prompts = sorted(self.stats)
        values = torch.full((len(prompts), self.buffer_size), float("nan"), dtype=torch.float64)
        for i, p in enumerate(prompts):
            seen = list(self.stats[p])
            values[i, : len(seen)] = torch.tensor(seen, dtype=torch.float64)
        names = torch.frombuffer(bytearray(json.dumps(prompts).encode("utf-8")), dtype=torch.uint8).clone()
        counts = torch.tensor([len(self.stats[p]) for p in prompts], dtype=torch.int64)
        return {f"{prefix}prompts": names, f"{prefix}values": values, f"{prefix}counts": counts}

    def load_state_dict(self, state: dict[str, torch.Tensor], prefix: str = "tracker.") -> None:
        if f"{prefix}prompts" not in state:
            self.stats = {}
            return
        prompts = json.loads(bytes(state[f"{prefix}prompts"].tolist()).decode("utf-8"))
        values, counts = state[f"{prefix}values"], state[f"{prefix}counts"]
        if values.shape[1] != self.buffer_size:
            raise ConfigError(
                f"the checkpoint's per-prompt statistics keep {values.shape[1]} rewards per prompt, but "
                f"estimator.stat_buffer_size is {self.buffer_size}; resume with the same value."
            )
        # A checkpoint written before non-finite rewards were kept out may hold some: drop them here,
        # so that resuming such a run with a mended reward continues.
        self.stats = {
            p: deque((v for v in values[i, : int(counts[i])].tolist() if math.isfinite(v)), maxlen=self.buffer_size)
            for i, p in enumerate(prompts)
        }


def batch_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """DDPO without per-prompt tracking: (r − mean) / (std + 1e-8) over the batch [N], population std."""
    rewards = rewards.detach().double()
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-8)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: rewards [G, B] (G samples of each of B prompts) -> (r − group mean) / (group std + eps).

    Population std within each group; each group's advantages sum to 0.
    """
    rewards = rewards.detach().double()
    return (rewards - rewards.mean(dim=0)) / (rewards.std(dim=0, unbiased=False) + eps)


def gather_prompts_and_rewards(prompts: list[str], rewards: torch.Tensor) -> tuple[list[str], torch.Tensor, int]:
    """Every process's prompts and rewards [N_total] (in rank order), and where this process's start.

    Without torch.distributed (or with one process) these are the inputs and 0.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(prompts), rewards, 0
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (list(prompts), rewards.detach().double().cpu()))
    start = sum(len(p) for p, _ in parts[: dist.get_rank()])
    return [q for p, _ in parts for q in p], torch.cat([r for _, r in parts]), start
