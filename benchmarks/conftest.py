"""The benchmark suite's settings: disabled (each case once, few steps) unless asked for.

``pytest`` (the normal test command) runs every case once with 4 sampler steps and a
batch of 2, so the suite never rots; ``pytest benchmarks --benchmark-only`` (or
``--benchmark-enable``) times them at 50 steps, batch 4, and measures peak memory in a
fresh process per case. The table of ratios is printed at the end and, when enabled,
written as JSON (``--bench-json``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from draft_core.testing.fixtures import one_thread, suite_threads  # noqa: F401  (autouse: one intra-op thread, as the core's tests)

SMOKE_STEPS, SMOKE_BATCH = 2, 1


def pytest_addoption(parser):
    group = parser.getgroup("draft benchmarks")
    group.addoption(
        "--bench-steps", type=int, default=50, help="DDIM steps per sample when benchmarks are enabled (default 50)"
    )
    group.addoption("--bench-batch", type=int, default=4, help="batch size when benchmarks are enabled (default 4)")
    group.addoption(
        "--bench-rounds", type=int, default=3, help="timed rounds per case, after one warm-up round (default 3)"
    )
    group.addoption("--bench-no-memory", action="store_true", help="skip the peak-memory subprocess per case")
    group.addoption(
        "--bench-json",
        default="benchmarks/results/bench_suite.json",
        help="where an enabled run writes its table (default benchmarks/results/bench_suite.json; '' for none)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    enabled = bool(config.getoption("benchmark_only", False) or config.getoption("benchmark_enable", False))
    if not enabled:
        # Before pytest-benchmark reads its options (its own pytest_configure runs last).
        config.option.benchmark_disable = True
    config._draft_bench = {
        "enabled": enabled,
        "steps": config.getoption("bench_steps") if enabled else SMOKE_STEPS,
        "batch": config.getoption("bench_batch") if enabled else SMOKE_BATCH,
        "rounds": config.getoption("bench_rounds"),
        "memory": enabled and not config.getoption("bench_no_memory"),
        "results": {},
    }


@pytest.fixture(scope="session")
def bench_settings(request) -> dict:
    return request.config._draft_bench


@pytest.fixture(scope="session")
def benches(bench_settings):
    """benches(model_name) -> one shared Bench per model (its LoRA trains across cases)."""
    from benchlib import make_bench

    made = {}

    def get(name: str):
        if name not in made:
            made[name] = make_bench(name, bench_settings["steps"], bench_settings["batch"])
        return made[name]

    return get


def summarize(results: dict) -> tuple[list[str], dict]:
    """Table lines and the targets of issue 5, from {model: {case: row}}."""
    lines, targets = [], {}
    for model, rows in results.items():
        lines.append(f"{model}:")
        base = rows.get("draft-k K=1", {})
        for case, row in rows.items():
            ratio = row.get("ratio_to_sampling")
            mem = row.get("peak_mib")
            mem_ratio = mem / base["peak_mib"] if mem is not None and base.get("peak_mib") else None
            lines.append(
                f"  {case:20s} {statistics.median(row['seconds']):8.3f} s"
                + (f"  {ratio:5.2f}x sampling" if ratio is not None else "")
                + (f"  peak {mem:8.1f} MiB ({mem_ratio:4.2f}x DRaFT-1)" if mem_ratio is not None else "")
            )
        t = {}
        if "ratio_to_sampling" in base:
            t["draft-1 / sampling (goal <= 1.10)"] = base["ratio_to_sampling"]
            lv = rows.get("draft-lv n=2", {}).get("ratio_to_sampling")
            if lv is not None:
                t["draft-lv n=2 / draft-1 (goal <= 1.12)"] = lv / base["ratio_to_sampling"]
        if base.get("peak_mib"):
            deep = {
                c: r["peak_mib"] / base["peak_mib"]
                for c, r in rows.items()
                if r.get("peak_mib") is not None and (c.startswith("draft-k") or c.startswith("draft (full"))
            }
            if deep:
                t["max peak memory over draft-k/full / draft-1 (goal <= 1.5)"] = max(deep.values())
                full = rows.get("draft (full, ckpt)", {}).get("peak_mib")
                if full is not None:
                    t["full (ckpt) peak memory / draft-1 (goal <= 1.5)"] = full / base["peak_mib"]
        for k, v in t.items():
            lines.append(f"  target: {k}: {v:.2f}")
        targets[model] = t
    return lines, targets


def pytest_terminal_summary(terminalreporter, config):
    state = getattr(config, "_draft_bench", None)
    if not state or not state["results"]:
        return
    lines, targets = summarize(state["results"])
    mode = "enabled" if state["enabled"] else "disabled: each case once, smoke settings"
    terminalreporter.section(f"draft benchmarks ({mode}; {state['steps']} DDIM steps, batch {state['batch']})")
    for line in lines:
        terminalreporter.write_line(line)
    out = config.getoption("bench_json")
    if state["enabled"] and out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {k: state[k] for k in ("steps", "batch", "rounds")}
        payload.update(
            results=state["results"], targets=targets, torch_threads=suite_threads(), torch=torch.__version__
        )
        path.write_text(json.dumps(payload, indent=2))
        terminalreporter.write_line(f"wrote {path}")
