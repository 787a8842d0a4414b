"""Issue 21's targets on a GPU: each family at its published size, DRaFT-1 with the memory levers,
the measured peak and step time next to ``draft plan``'s prediction.

    python benchmarks/gpu_memory_check.py [--rows ...] [--predicted benchmarks/results/plan_levers.json] \\
        [--out benchmarks/results/gpu_memory_check.json]
    python benchmarks/gpu_memory_check.py --tiny     # the same code on the tiny families, on CPU (a dry run)

Rows: plan_levers.ROWS that have a target (1024 px, DRaFT-1, batch 1, HPSv2, LoRA rank 32, bfloat16,
the levers at their defaults plus the row's own: FLUX.1-dev with an nf4 base, FLUX.1-dev, SD3.5-medium,
SDXL at batch 1 and 4, SD 1.4 with DRaFT-LV at batch 4). No weights are downloaded: each model is its
published architecture with random weights made on the GPU in bfloat16 (planning.architectures), its
denoiser quantized there when the row says (``model.quantize``, as ``draft train`` does it), and the
reward HPSv2's architecture with random weights; costs do not depend on the values. The prediction is
read from ``--predicted`` (plan_levers.py's JSON: a plan of these sizes takes minutes on a CPU, not to be
spent on GPU time) or traced here when a row is missing there. Measured (``measure_step``: a warm-up
step, then the measured one): the live-tensor tally, ``torch.cuda.max_memory_allocated`` and
``max_memory_reserved`` over the step, and its wall-clock time.

``--tiny``: each row on its family's tiny model on CPU (float32, 2 sampler steps, a small HPSv2
architecture, int8 for nf4; the encoders' home the meta device, as plan_check_levers.py does), with
the prediction traced: a check that the script runs, in minutes on a loaded CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from benchlib import peak_memory, write_json
from gpu_plan_check import TINY_CLIP, cuda_probe
from gpu_scale import FAMILIES
from plan_check_levers import encoders_home
from plan_levers import ROWS, row_config

GiB, MiB = 2**30, 2**20
TARGETED = [label for label, row in ROWS.items() if row[3] is not None]


def tiny_config(label: str):
    """The row on its family's tiny model, as the module doc says."""
    family, batch, extra, _ = ROWS[label]
    extra = [s.replace("model.quantize=nf4", "model.quantize=int8") for s in extra]
    return row_config(
        family,
        batch,
        [
            *extra,
            f"model.name={FAMILIES[family].tiny}",
            "model.dtype=float32",
            "sampler.steps=2",
            f"reward={json.dumps({'name': 'hpsv2', 'arch': TINY_CLIP})}",
        ],
    )


def published_factory(config):
    """Builds the row's published model on the GPU with random weights, its denoiser quantized as configured."""
    from draft_core.models.quantize import quantize_denoiser
    from draft_core.planning.architectures import published_model

    def build():
        model = published_model(config.model.name, "cuda", torch.bfloat16)
        if config.model.quantize != "none":
            quantize_denoiser(model.denoiser, config.model.quantize, "cuda")
            torch.cuda.empty_cache()  # the bfloat16 layers it replaced
        return model

    return build


def timed(probe):
    def around(step):
        t0 = time.perf_counter()
        out = probe(step)
        return {**out, "seconds": time.perf_counter() - t0}

    return around


def measure(config, tiny: bool) -> dict:
    from draft_core.planning.step import measure_step

    if tiny:
        with encoders_home("meta"):
            trace = measure_step(
                config, "cpu", around=timed(lambda step: peak_memory(step, "cpu")), random_rewards=True
            )
        return {"tally": trace.peak, "seconds": trace.extra["seconds"]}
    trace = measure_step(
        config, "cuda", model_factory=published_factory(config), around=timed(cuda_probe), random_rewards=True
    )
    return {"tally": trace.peak, **trace.extra}


def main(argv: list[str] | None = None) -> dict:
    from draft_core.planning.step import plan_step

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="+", default=TARGETED, choices=list(ROWS))
    ap.add_argument("--tiny", action="store_true", help="the tiny families on CPU (a dry run of this script)")
    ap.add_argument("--predicted", type=Path, default=Path(__file__).parent / "results" / "plan_levers.json")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.tiny:
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        sys.exit("gpu_memory_check.py needs a CUDA GPU at published scale; use --tiny for a CPU dry run.")
    known = {} if a.tiny or not a.predicted.exists() else json.loads(a.predicted.read_text())["rows"]
    rows = {}
    for label in a.rows:
        config = tiny_config(label) if a.tiny else row_config(*ROWS[label][:3])
        t0 = time.perf_counter()
        if label in known:
            predicted = known[label]["peak_gib"] * GiB
        else:
            predicted = plan_step(config, "cpu" if a.tiny else "cuda").peak
        m = measure(config, a.tiny)
        row = rows[label] = {
            "predicted": predicted,
            **m,
            "ratio_to_tally": predicted / m["tally"],
            "target_gib": ROWS[label][3],
            "seconds_total": time.perf_counter() - t0,
        }
        if "max_allocated" in m:
            row["ratio_to_max_allocated"] = predicted / m["max_allocated"]
            row["ratio_to_max_reserved"] = predicted / m["max_reserved"]
        unit, size = ("GiB", GiB) if not a.tiny else ("MiB", MiB)
        extra = (
            f", max_allocated {m['max_allocated'] / GiB:.2f} GiB ({row['ratio_to_max_allocated']:.3f}), "
            f"reserved {m['max_reserved'] / GiB:.2f} GiB"
            if "max_allocated" in m
            else ""
        )
        print(
            f"{label:40s} predicted {predicted / size:8.2f} {unit}, tally {m['tally'] / size:8.2f} {unit} "
            f"({row['ratio_to_tally']:.3f}){extra}, step {m['seconds']:.1f} s",
            flush=True,
        )
        write_json(a.out, {"device": "cpu" if a.tiny else torch.cuda.get_device_name(), "rows": rows})
        gc.collect()
        if not a.tiny:
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
