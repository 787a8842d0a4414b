"""Run by tests/test_dpg.py in two spawned processes (kept apart so the children import little)."""

import torch
import torch.distributed as dist


def average_worker(rank: int, init_file: str, out_dir: str) -> None:
    from draft_estimators.dpg import _average_across_processes

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        grads = [torch.full((2, 3), float(rank + 1)), torch.arange(4.0) * (rank + 1)]
        _average_across_processes(grads)
        torch.save(grads, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
