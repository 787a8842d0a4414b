"""One training step of every built-in estimator, and sampling alone, on tiny-random and digits.

Each round of a case first runs sampling alone on the same batch (timed here, outside
pytest-benchmark's clock), then the case (timed by pytest-benchmark): the ratio of the
two medians is the case's cost relative to sampling, measured side by side so that
load on a shared machine hits both alike. Peak memory comes from a fresh process per
case (benchlib.peak_memory says how it is measured).
"""

from __future__ import annotations

import math
import statistics
import time

import pytest
import torch
from benchlib import CASES, memory_in_subprocess, pairs, peak_memory, sync

from draft_core.plugins import load_registry


def case_id(case: str) -> str:
    """A -k friendly id: 'draft-k K=10' -> 'draft-k_K10', 'draft (full, ckpt)' -> 'draft_full_ckpt'."""
    return "".join(c for c in case.replace(", ", "_").replace(" ", "_") if c not in "=()")


@pytest.mark.parametrize(("model", "case"), pairs(), ids=[f"{m}-{case_id(c)}" for m, c in pairs()])
def test_step(benchmark, benches, bench_settings, model, case):
    bench = benches(model)
    run = bench.runner(case)
    device = bench.model.device
    enabled = bench_settings["enabled"]
    sampling: list[float] = []
    seeds = iter(range(10**6))

    def setup():
        seed = next(seeds)
        if enabled:  # the paired sampling-alone timing of this round
            sync(device)
            t0 = time.perf_counter()
            bench.sample_alone(seed)
            sync(device)
            sampling.append(time.perf_counter() - t0)
        return (seed,), {}

    wall: list[float] = []

    def timed(seed):
        t0 = time.perf_counter()
        out = run(seed)
        sync(device)
        wall.append(time.perf_counter() - t0)
        return out

    before = [p.detach().clone() for p in bench.params]
    out = benchmark.pedantic(timed, setup=setup, rounds=bench_settings["rounds"], warmup_rounds=1)

    # The step did what a training step does: finite loss, a reward per image, LoRA updated.
    if CASES[case] is None:
        assert out.shape == (len(bench.prompts), 3, *bench.model.image_size)
    else:
        assert math.isfinite(out.loss.item()) and out.reward.shape == (len(bench.prompts),)
        assert any(not torch.equal(b, p) for b, p in zip(before, bench.params)), "the LoRA did not change"

    row = {"seconds": list(benchmark.stats.stats.data) if enabled else wall}
    if enabled:
        row["sampling_seconds"] = sampling[1:]  # the warm-up round's is dropped, as pytest-benchmark drops its
        row["ratio_to_sampling"] = statistics.median(row["seconds"]) / statistics.median(row["sampling_seconds"])
        benchmark.extra_info["ratio_to_sampling"] = row["ratio_to_sampling"]
        if bench_settings["memory"]:
            mem = memory_in_subprocess(model, case, bench_settings["steps"], bench_settings["batch"])
            row["peak_mib"], row["memory_method"] = mem["peak_mib"], mem["method"]
            benchmark.extra_info["peak_mib"] = mem["peak_mib"]
    bench_settings["results"].setdefault(model, {})[case] = row


def test_every_built_in_estimator_has_a_benchmark_case():
    builtin = {
        e.name
        for e in load_registry().entries("estimator")
        if e.plugin == "draft_estimators" and not getattr(e.factory, "wraps_estimator", False)
    }  # kl wraps the others
    covered = {section["name"] for section in CASES.values() if section is not None}
    assert {"draft", "draft-k", "draft-lv", "refl", "dpg", "ddpo", "grpo"} <= builtin
    assert builtin <= covered, f"estimators without a benchmark case: {sorted(builtin - covered)}"


def test_peak_memory_sees_a_large_allocation():
    """The CPU probe reports an allocation made inside the measured call, and not one freed before."""
    hold = torch.ones(64, 2**20 // 4)  # 64 MiB, resident before the measurement
    hold.add_(1)
    del hold
    res = peak_memory(lambda: torch.ones(128, 2**20 // 4).add_(1), "cpu")  # 128 MiB inside
    assert 100 < res["peak_mib"] < 400, res


@pytest.mark.slow  # a fresh interpreter imports torch and diffusers (~10 s); the enabled suite runs this path per case
def test_memory_probe_runs_in_a_fresh_process():
    res = memory_in_subprocess("tiny-random", "draft-k K=1", steps=2, batch=1, timeout=300)
    assert res["case"] == "draft-k K=1" and res["peak_mib"] > 0 and "VmHWM" in res["method"]
