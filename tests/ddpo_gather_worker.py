"""Run by tests/test_policy_gradient.py in two spawned processes (kept apart so the children import little)."""

import torch
import torch.distributed as dist

PROMPTS = [["a cat", "a dog", "a cat"], ["a dog", "a bird", "a cat"]]
REWARDS = [torch.tensor([1.0, 4.0, 2.0]), torch.tensor([5.0, 0.5, 7.0])]


def advantages_worker(rank: int, init_file: str, out_dir: str) -> None:
    from draft_estimators.ddpo import DDPO

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        est = DDPO(stat_min_count=2)
        first, _ = est.advantages(REWARDS[rank], PROMPTS[rank])
        second, _ = est.advantages(REWARDS[rank] + 1, PROMPTS[rank])
        torch.save({"first": first, "second": second, **est.state_dict()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
