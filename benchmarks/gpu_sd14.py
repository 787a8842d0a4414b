"""Step time and peak GPU memory at Stable Diffusion 1.4 scale, with an HPSv2-sized reward.

    python benchmarks/gpu_sd14.py [--batches 1 4] [--steps 50] [--rounds 2] [--out results/gpu_sd14.json]
    python benchmarks/gpu_sd14.py --tiny      # the same code on small configs, on CPU, in seconds

No weights are downloaded: SD 1.4's UNet, VAE and CLIP text encoder are built from their
published configuration values (REFERENCE §2) with random weights, and the reward is
HPSv2's architecture (open_clip ViT-H-14, REFERENCE §4) with random weights: cosine of the
normalised image and prompt embeddings, the image resized as HPSv2's preprocessing does
(longest side to 224, bicubic; CLIP mean/std). Costs do not depend on the weights' values.

Setting (paper, large scale): 512 px, 50 DDIM steps, guidance 7.5, base weights in
bfloat16, LoRA rank 32 in float32 on attention and feed-forward layers. Cases: sampling
alone, DRaFT-1, DRaFT-LV (n = 2), DRaFT-K (K = 10) and full DRaFT (K = 50, checkpointed),
each at every batch size. Time: median of ``--rounds`` rounds after a warm-up, all cases
interleaved (benchlib.time_interleaved). Memory: per case, ``torch.cuda.max_memory_allocated``
over one step (total, i.e. with the weights, and above what was allocated before the
step), and ``max_memory_reserved`` (what the caching allocator held: what must fit).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from benchlib import Bench, peak_memory, ratios, time_interleaved, warm_up, write_json

from draft_core.lora import add_lora, lora_parameters
from draft_core.models.pipeline import DiffusionModel
from draft_core.models.tiny import SD14_SCHEDULER_CONFIG, tiny_text_config, tiny_unet_config, tiny_vae_config
from draft_core.models.tokenizer import offline_clip_tokenizer
from draft_core.planning.architectures import sd14_text_config, sd14_unet_config, sd14_vae_config
from draft_core.plugins import load_registry
from draft_core.rewarding.preprocess import OPEN_CLIP_LONGEST_224

CASES = ["sampling", "draft-k K=1", "draft-lv n=2", "draft-k K=10", "draft (full, ckpt)"]
PROMPTS = [
    "a photo of a corgi wearing a red scarf",
    "an oil painting of a lighthouse at dawn",
    "a raccoon washing dishes",
    "a watercolor of a mountain village",
]


def build_sd14(tiny: bool) -> DiffusionModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(**(tiny_unet_config() if tiny else sd14_unet_config()))
    vae = AutoencoderKL(**(tiny_vae_config() if tiny else sd14_vae_config()))
    text = CLIPTextModel(tiny_text_config() if tiny else sd14_text_config())
    return DiffusionModel(
        unet,
        text,
        offline_clip_tokenizer(),
        SD14_SCHEDULER_CONFIG,
        vae=vae,
        name="tiny-architecture-random" if tiny else "sd14-architecture-random",
    )


class HPSv2Sized(torch.nn.Module):
    """HPSv2's scoring on an open_clip model: cos(image embedding, prompt embedding), no logit scale."""

    def __init__(self, tiny: bool) -> None:
        super().__init__()
        import open_clip

        if tiny:
            from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

            self.clip = CLIP(
                embed_dim=32,
                vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=32),
                text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
            )
            self.preprocess = OPEN_CLIP_LONGEST_224.with_size(32)
        else:
            self.clip = open_clip.create_model("ViT-H-14", pretrained=None)
            self.preprocess = OPEN_CLIP_LONGEST_224
        self.clip.requires_grad_(False).eval()
        self.tokenizer = open_clip.get_tokenizer("ViT-H-14")
        self._text: dict[str, torch.Tensor] = {}

    def forward(self, images: torch.Tensor, prompts) -> torch.Tensor:
        dtype = next(self.clip.parameters()).dtype
        x = self.preprocess(images.float()).to(dtype)
        img = torch.nn.functional.normalize(self.clip.encode_image(x).float(), dim=-1)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text]
        if missing:
            with torch.no_grad():
                emb = self.clip.encode_text(self.tokenizer(missing).to(images.device)).float()
            self._text.update(zip(missing, torch.nn.functional.normalize(emb, dim=-1)))
        txt = torch.stack([self._text[p] for p in prompts])
        return (img * txt).sum(-1)


def build_bench(
    tiny: bool,
    steps: int,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    lora_rank: int,
    model=None,
    reward=None,
    sampler: str = "ddim",
    guidance: float = 7.5,
) -> Bench:
    registry = load_registry()
    model = model or build_sd14(tiny).to(device=device, dtype=dtype)
    reward = reward or HPSv2Sized(tiny).to(device=device, dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        params = lora_parameters(model) if hasattr(model.denoiser, "peft_config") else add_lora(model, rank=lora_rank)
    sampler = registry.build("sampler", sampler, steps=steps, guidance_scale=guidance)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    return Bench(model, params, torch.optim.AdamW(params, lr=2e-4), sampler, reward, prompts, registry)


def measure_cases(bench: Bench, cases: list[str], rounds: int, device: torch.device) -> dict[str, dict]:
    """Per case (``cases[0]``: sampling, the ratios' base): the step's peak memory (one step after a
    warm-up one), its times over ``rounds`` interleaved rounds, their median and its ratio to sampling."""
    warm_up(bench)
    memory = {}
    for case in cases:
        run = bench.runner(case)
        run(0)  # warm-up (kernels, allocator)
        memory[case] = peak_memory(lambda: run(1), device)
    times = time_interleaved(bench, cases, rounds, warmup=0)
    rel = ratios(times)
    return {
        case: {
            "seconds": times[case],
            "median_s": statistics.median(times[case]),
            "ratio_to_sampling": rel[case],
            **memory[case],
        }
        for case in cases
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="small configs on CPU (a smoke run of this script)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default: 1 4 (tiny: 1 2)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50; tiny: 2, K and n clipped)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args(argv)
    if a.tiny:
        torch.set_num_threads(1)  # on a shared CPU, more threads spin against the neighbours
        device, dtype = torch.device("cpu"), torch.float32
        batches, steps = a.batches or [1, 2], a.steps or 2
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_sd14.py needs a CUDA GPU at full scale (SD 1.4 at 512 px); use --tiny for a CPU smoke run.")
        device, dtype = torch.device("cuda"), torch.bfloat16
        batches, steps = a.batches or [1, 4], a.steps or 50
    cases = ["sampling"] + [c for c in a.cases if c != "sampling"]
    t0 = time.perf_counter()
    first = build_bench(a.tiny, steps, batches[0], device, dtype, a.lora_rank)
    n_params = {
        name: sum(p.numel() for p in m.parameters())
        for name, m in (
            ("unet_with_lora", first.model.unet),
            ("vae", first.model.vae),
            ("text_encoder", first.model.text_encoder),
            ("reward_clip", first.reward.clip),
        )
    }
    result: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "steps": steps,
        "lora_rank": a.lora_rank,
        "image_size": list(first.model.image_size),
        "params": n_params,
        "build_seconds": time.perf_counter() - t0,
        "batches": {},
    }
    print(
        f"{result['device']}, {dtype}, {steps} DDIM steps, {result['image_size'][0]} px, LoRA rank {a.lora_rank}; params {n_params}"
    )
    for batch in batches:
        bench = build_bench(a.tiny, steps, batch, device, dtype, a.lora_rank, model=first.model, reward=first.reward)
        rows = result["batches"][batch] = measure_cases(bench, cases, a.rounds, device)
        print(f"batch {batch}:")
        for case, row in rows.items():
            total = row.get("total_peak_mib")
            print(
                f"  {case:20s} {row['median_s']:8.3f} s  {row['ratio_to_sampling']:5.2f}x sampling  "
                f"step peak {row['peak_mib']:9.1f} MiB"
                + (
                    f"  total {total / 1024:6.2f} GiB, reserved {row['reserved_peak_mib'] / 1024:6.2f} GiB"
                    if total
                    else ""
                )
            )
    lv4 = result["batches"].get(4, {}).get("draft-lv n=2", {})
    if "reserved_peak_mib" in lv4:
        result["draft_lv_batch4_fits_24gib"] = lv4["reserved_peak_mib"] <= 24 * 1024
        print(
            f"DRaFT-LV at batch 4: {lv4['reserved_peak_mib'] / 1024:.2f} GiB reserved; fits in 24 GiB: {result['draft_lv_batch4_fits_24gib']}"
        )
    write_json(a.out, result)
    return result


if __name__ == "__main__":
    main()
