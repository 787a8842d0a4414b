"""How far an int8 base (``model.quantize: int8``) is from the unquantized one, per model (RESULTS section 9).

For each model: the denoiser's linear weights' storage (bytes) plain and int8; samples from the same
prompts and noise (mean and largest absolute pixel difference, pixels in [0, 1]); and the gradient of
one DRaFT-1 step (draft-k, k=1, reward ink-coverage) with respect to the same random LoRA (cosine
and relative norm of the difference). The quickstart runs themselves are ``draft train --preset
quickstart[-flow] --set model.quantize=int8`` (RESULTS gives their figures).

    python benchmarks/quantize_check.py [--models tiny-random,digits,...]
"""

from __future__ import annotations

import argparse
import json

import torch

from draft_core.config import load_config
from draft_core.lora import add_lora
from draft_core.models.loading import load_model
from draft_core.models.quantize import quantize_denoiser
from draft_core.plugins.protocols import StepInputs
from draft_core.training.components import build_components

MODELS = ("tiny-random", "tiny-random-sdxl", "tiny-random-sd3", "tiny-random-flux", "digits", "digits-flow")
PROMPTS = ["a handwritten digit three", "a handwritten digit seven"]
# Each model's sampler as its quickstart (or its tests, for the tiny families) uses it.
SAMPLERS = {
    "digits": "{name: ddim, steps: 20, guidance_scale: 7.5}",
    "digits-flow": "{name: euler, steps: 20, guidance_scale: 4.0}",  # digits_flow.DEFAULT_GUIDANCE
}
TINY_SAMPLER = {
    "sd": "{name: ddim, steps: 4, guidance_scale: 3.0}",
    "flow": "{name: euler, steps: 4, guidance_scale: 3.5}",
}


def linear_bytes(module: torch.nn.Module) -> int:
    """Bytes of the linear layers' weights as stored (a quantized tensor: its inner tensors)."""
    total = 0
    for sub in module.modules():
        w = getattr(sub, "weight", None)
        if not isinstance(sub, torch.nn.Linear) or w is None:
            continue
        inner = w.__tensor_flatten__()[0] if hasattr(w, "__tensor_flatten__") else None
        parts = [getattr(w, n) for n in inner] if inner else [w]
        total += sum(p.numel() * p.element_size() for p in parts)
    return total


def build(name: str, quantize: str):
    model = load_model(name, "cpu", torch.float32)
    plain = linear_bytes(model.denoiser)
    if quantize != "none":
        quantize_denoiser(model.denoiser, quantize, "cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        params = add_lora(model, rank=4, init=False)  # a random LoRA, the same on both
    return model, params, plain


def components(model):
    sampler = SAMPLERS.get(model.name) or TINY_SAMPLER["flow" if model.flow_matching else "sd"]
    config = load_config(
        None,
        [
            f"model.name={model.name}",
            f"sampler={sampler}",
            "estimator={name: draft-k, k: 1}",
            "reward={name: ink-coverage, softness: 0.05}",
        ],
    )
    return build_components(config)


def measure(name: str) -> dict:
    out: dict = {"model": name}
    runs = {}
    for q in ("none", "int8"):
        model, params, plain = build(name, q)
        c = components(model)
        noise = model.make_noise(len(PROMPTS), torch.Generator().manual_seed(0))
        with torch.no_grad():
            images = model.decode(
                c.sampler.sample(
                    model, model.encode_prompts(PROMPTS), noise, generator=torch.Generator().manual_seed(1)
                )
            )
        inputs = StepInputs(
            model, c.sampler, c.reward, model.encode_prompts(PROMPTS), noise, torch.Generator().manual_seed(2), None
        )
        loss = c.estimator(inputs).loss
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in params])
        runs[q] = (images, grad, linear_bytes(model.denoiser))
        out["linear_bytes_plain"] = plain
    (im0, g0, b0), (im1, g1, b1) = runs["none"], runs["int8"]
    diff = (im1 - im0).abs()
    out.update(
        linear_bytes_int8=b1,
        storage_ratio=round(b1 / b0, 3),
        pixel_mean_abs=float(diff.mean()),
        pixel_max_abs=float(diff.max()),
        grad_cosine=float(torch.nn.functional.cosine_similarity(g0, g1, dim=0)),
        grad_rel_diff=float((g1 - g0).norm() / g0.norm()),
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(
        "| model | linear weights plain → int8 | sample pixels: mean / max abs diff | LoRA gradient: cosine / rel. diff |"
    )
    print("| --- | --- | --- | --- |")
    for name in args.models.split(","):
        r = measure(name)
        print(
            f"| {name} | {r['linear_bytes_plain'] / 2**20:.2f} → {r['linear_bytes_int8'] / 2**20:.2f} MiB ({r['storage_ratio']:.2f}x) "
            f"| {r['pixel_mean_abs']:.4f} / {r['pixel_max_abs']:.3f} | {r['grad_cosine']:.4f} / {r['grad_rel_diff']:.3f} |",
            flush=True,
        )
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
