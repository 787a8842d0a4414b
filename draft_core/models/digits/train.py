"""Train the ``digits`` model and the digit classifier, deterministically from a seed.

    python -m draft_core.models.digits.train [--out DIR] [--steps 2200] [--seed 0] [--threads 2]

The recipe is REFERENCE §12's: a pixel-space UNet (32x32, block widths 32/64/64,
cross-attention only at 8x8 with 2 heads) and a 2-layer CLIP text encoder (width 64) trained jointly; ``squaredcos_cap_v2`` betas with
v-prediction (epsilon-prediction blows up at the near-zero-SNR first steps); AdamW
lr 1e-3 with warm-up and cosine decay, gradient clip 1, batch 64, 10% empty prompts for
classifier-free guidance; the EMA (0.999) weights are the ones written. Then a small CNN
classifier (~20 s) for the ``digit-classifier`` reward.

The shipped weights come from the defaults: 34 minutes on 2 shared CPU cores (0.84-1.0
s/step; §12 measured 0.42 s/step elsewhere), so 2,200 steps rather than §12's 2,500 to
stay near a 30-minute budget. Their samples: 200 of 200 recognised as the prompted digit
by an independent SVC (benchmarks/digits_quality.py).

Same seed, thread count, torch version and machine type give the same bits: all
randomness comes from seeded generators in a fixed order, and
``torch.use_deterministic_algorithms(True)`` is on while training.

Without ``--out`` the files go where the package ships them: the model's into
``draft_core/models/digits/weights/``, the classifier beside it.
With ``--out DIR`` all of them go into DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from draft_core.models.digits import WEIGHTS_DIR, pack_text_encoder_state
from draft_core.models.digits import data as D

TOKENIZER_MAX_LENGTH = 16  # the longest training prompt is 6 tokens with bos/eos
TEXT_WIDTH = 64


def unet_config() -> dict:
    return dict(
        sample_size=D.IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",  # at 8x8 too
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=2,  # diffusers' name for the number of heads (its issue #2011)
        norm_num_groups=32,
    )


def text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_act="quick_gelu",
        projection_dim=TEXT_WIDTH,
    )


def scheduler_config() -> dict:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        # Clipping each step's x0 estimate flattens over-guided digits into blobs (§12);
        # DiffusionModel.decode clamps only the final image.
        clip_sample=False,
    )
    return {k: v for k, v in sched.config.items() if not k.startswith("_")} | {"_class_name": "DDIMScheduler"}


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of parameters, decay warmed up as (1 + t) / (10 + t) up to ``decay``."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(module).requires_grad_(False).eval()
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.module.parameters(), module.parameters()):
            ema_p.lerp_(p, 1 - d)


class PromptedBatches:
    """The training batches of both embedded models: (clean images, prompt row) drawn from ``gen``.

    Each epoch is a fresh permutation (its tail dropped); each sample gets one of the digit's
    phrasings, or the empty prompt at ``data.EMPTY_PROMPT_RATE``. The rows index
    ``data.all_prompts()`` (digit * phrasings + phrasing; the last row is ""). The draws come
    in this fixed order, so the caller's further draws from ``gen`` stay where they were.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int, gen: torch.Generator) -> None:
        self.images, self.labels, self.batch, self.gen = images, labels, batch, gen
        self.n_phrasings, self.empty = len(D.PHRASINGS), len(D.all_prompts()) - 1
        self.order, self.cursor = torch.randperm(len(images), generator=gen), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch, gen = self.batch, self.gen
        if self.cursor + batch > len(self.order):
            self.order, self.cursor = torch.randperm(len(self.images), generator=gen), 0
        idx = self.order[self.cursor : self.cursor + batch]
        self.cursor += batch
        x0, y = self.images[idx], self.labels[idx]
        phrasing = torch.randint(0, self.n_phrasings, (batch,), generator=gen)
        drop = torch.rand(batch, generator=gen) < D.EMPTY_PROMPT_RATE
        return x0, torch.where(drop, torch.full_like(y, self.empty), y * self.n_phrasings + phrasing)


class LossLog:
    """The mean loss and seconds per step every ``log_every`` steps, printed and kept as ``history``."""

    def __init__(self, steps: int, log_every: int) -> None:
        self.steps, self.log_every = steps, log_every
        self.history: list[dict] = []
        self._window: list[float] = []
        self.start = self._tick = time.perf_counter()

    def add(self, step: int, loss: float) -> None:
        self._window.append(loss)
        if (step + 1) % self.log_every == 0 or step + 1 == self.steps:
            now = time.perf_counter()
            mean = sum(self._window) / len(self._window)
            rate = (now - self._tick) / len(self._window)
            print(f"step {step + 1}/{self.steps}  loss {mean:.4f}  {rate:.3f} s/step", flush=True)
            self.history.append({"step": step + 1, "loss": mean, "s_per_step": rate})
            self._window, self._tick = [], now

    def summary(self) -> dict:
        return {
            "seconds": time.perf_counter() - self.start,
            "final_loss": self.history[-1]["loss"] if self.history else float("nan"),
            "history": self.history,
        }


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def deterministic(threads: int):
    """Deterministic kernels and a fixed intra-op thread count, restored afterwards."""
    before_threads = torch.get_num_threads()
    before_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before_det)
        torch.set_num_threads(before_threads)


# -- the diffusion model -----------------------------------------------------------------


def train_diffusion(steps: int, seed: int, batch: int = 64, lr: float = 1e-3, log_every: int = 100) -> dict:
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from draft_core.models.tokenizer import offline_clip_tokenizer

    images, labels = D.load_images()
    prompts = D.all_prompts()
    tokenizer = offline_clip_tokenizer(model_max_length=TOKENIZER_MAX_LENGTH)
    prompt_ids = tokenizer(
        prompts, padding="max_length", max_length=TOKENIZER_MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids  # [10 * P + 1, L]; the last row is ""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config()).train()
    text_encoder = CLIPTextModel(text_config()).train()
    sched = DDIMScheduler.from_config(scheduler_config())
    gen = torch.Generator().manual_seed(seed)

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, min(100, steps // 10))
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    ema_unet, ema_text = EMA(unet, 0.999), EMA(text_encoder, 0.999)

    batches, log = PromptedBatches(images, labels, batch, gen), LossLog(steps, log_every)
    for step in range(steps):
        x0, which = batches.next()
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)

        x_t = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        cond = text_encoder(prompt_ids[which])[0]
        pred = unet(x_t, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, target)

        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        ema_unet.update(unet)
        ema_text.update(text_encoder)

        log.add(step, loss.item())

    kept = sorted(set(prompt_ids.flatten().tolist()))
    return {
        "unet": ema_unet.module,
        "text_encoder": ema_text.module,
        "kept_token_ids": kept,
        **log.summary(),
        "params": {
            "unet": sum(p.numel() for p in unet.parameters()),
            "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
        },
    }


# -- the classifier ----------------------------------------------------------------------


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """Light augmentation of [B, 3, 32, 32] in [0, 1]: shifts up to ``max_shift`` px (under one
    original pixel), contrast x0.75..1.25, and faint noise, so the CNN also reads samples."""
    b = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4)
    shifts = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=gen).tolist()
    size = x.shape[-1]
    x = torch.stack([padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(shifts)])
    gain = 0.75 + 0.5 * torch.rand(b, 1, 1, 1, generator=gen)
    x = x * gain + 0.03 * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def train_classifier(steps: int, seed: int, batch: int = 64, lr: float = 3e-3) -> dict:
    from draft_core.models.digits.classifier import DEFAULT_WIDTHS, DigitCNN, classifier_input

    pixels, labels = D.load_raw()
    images = D.upsample(pixels)  # [N, 3, 32, 32] in [0, 1], the reward's input convention
    held = D.classifier_holdout(len(images))
    train_x, train_y = images[~held], labels[~held]
    held_x, held_y = images[held], labels[held]

    torch.manual_seed(seed + 1)
    net = DigitCNN(DEFAULT_WIDTHS).train()
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, min(30, steps // 10))
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    t0 = time.perf_counter()
    order, cursor = torch.randperm(len(train_x), generator=gen), 0
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        if cursor + batch > len(order):
            order, cursor = torch.randperm(len(train_x), generator=gen), 0
        idx = order[cursor : cursor + batch]
        cursor += batch
        x = classifier_input(augment(train_x[idx], gen))
        loss = F.cross_entropy(net(x), train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        held_acc = (net(classifier_input(held_x)).argmax(-1) == held_y).float().mean().item()
    print(f"classifier: {steps} steps, {time.perf_counter() - t0:.1f} s, held-out accuracy {held_acc:.4f}", flush=True)
    return {
        "net": net,
        "widths": list(DEFAULT_WIDTHS),
        "steps": steps,
        "final_loss": loss.item(),
        "held_out_accuracy": held_acc,
        "seconds": time.perf_counter() - t0,
    }


# -- writing -----------------------------------------------------------------------------


def save_model(out: Path, result: dict) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    unet, text_encoder = result["unet"], result["text_encoder"]
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(out / "unet.safetensors"))
    write_json(out / "unet_config.json", {k: v for k, v in unet.config.items() if not k.startswith("_")})
    packed = pack_text_encoder_state(text_encoder.state_dict(), result["kept_token_ids"])
    save_file(packed, str(out / "text_encoder.safetensors"))
    write_json(out / "text_config.json", text_encoder.config.to_dict())
    write_json(out / "scheduler_config.json", scheduler_config())
    write_json(
        out / "model.json",
        {
            "name": "digits",
            "tokenizer": "offline_clip_tokenizer (SD 1.x's CLIP BPE)",
            "tokenizer_max_length": TOKENIZER_MAX_LENGTH,
            "image_size": D.IMAGE_SIZE,
            "upsampling": "bilinear from 8x8, align_corners=False",
            "prompts": D.PROMPTS,
            "phrasings": D.PHRASINGS,
            "weights_dtype": "float32",
            "text_encoder_kept_token_ids": result["kept_token_ids"],
            "text_encoder_note": "token-embedding rows of tokens outside the training prompts are zeros",
        },
    )


def save_classifier(out: Path, result: dict) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in result["net"].state_dict().items()}, str(out / "digit_classifier.safetensors")
    )
    write_json(
        out / "digit_classifier.json",
        {
            "widths": result["widths"],
            "input": "[B, 1, 32, 32]: RGB channel mean, bilinear antialiased resize to 32x32, then 2x - 1",
            "held_out": f"load_digits images with index % {D.HOLDOUT_EVERY} == {D.HOLDOUT_EVERY - 1}",
            "held_out_accuracy": round(result["held_out_accuracy"], 4),
            "steps": result["steps"],
        },
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write every file here (default: the package's folders)")
    ap.add_argument("--steps", type=int, default=2200, help="diffusion training steps (batch 64)")
    ap.add_argument("--classifier-steps", type=int, default=1000, help="classifier steps (batch 64); 0 skips it")
    ap.add_argument("--batch", type=int, default=64, help="diffusion batch size (smaller only for quick checks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (part of what fixes the bits)")
    args = ap.parse_args(argv)
    model_dir = args.out or WEIGHTS_DIR

    import diffusers
    import transformers

    # fork_rng: training seeds the global generator; the caller's stream is left as it was.
    with deterministic(args.threads), torch.random.fork_rng(devices=[]):
        t0 = time.perf_counter()
        model = train_diffusion(args.steps, args.seed, batch=args.batch)
        save_model(model_dir, model)
        log = {
            "command": "python -m draft_core.models.digits.train " + " ".join(sys.argv[1:] if argv is None else argv),
            "steps": args.steps,
            "batch": args.batch,
            "seed": args.seed,
            "threads": args.threads,
            "seconds": round(model["seconds"], 1),
            "final_loss": model["final_loss"],
            "history": model["history"],
            "params": model["params"],
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        }
        if args.classifier_steps > 0:
            clf = train_classifier(args.classifier_steps, args.seed)
            save_classifier(model_dir, clf)
            log["classifier"] = {k: clf[k] for k in ("steps", "final_loss", "held_out_accuracy", "seconds")}
        log["total_seconds"] = round(time.perf_counter() - t0, 1)
        write_json(model_dir / "training_log.json", log)
    print(f"wrote {model_dir}", flush=True)


if __name__ == "__main__":
    main()
