"""Train the ``digits-flow`` model with rectified flow, deterministically from a seed.

    python -m draft_core.models.digits_flow.train [--out DIR] [--steps 2500] [--batch 32] [--seed 0] [--threads 1]

The recipe: an ``SD3Transformer2DModel`` on 32x32x3 pixels in [-1, 1] (patch 2: 256 image
tokens of 2x2 pixels; width 96 = 6 heads x 16, 4 joint blocks, 1.31M parameters) and two
2-layer CLIP text encoders (width 64) with projections, trained
jointly from scratch. Conditioning is what ``StableDiffusion3Pipeline.encode_prompt``
computes: the loop calls it on a pipeline built around the modules being trained, with
10% empty prompts for classifier-free guidance. Rectified flow as SD3 trains it:
x_t = (1 - s) x0 + s eps, the transformer at timestep 1000 s predicts eps - x0, s from a
logit-normal (0, 1). AdamW lr 1e-3 with warm-up and cosine decay, gradient clip 1; the EMA
(0.999) weights are the ones written. The data and the EMA/schedule helpers are the
``digits`` model's.

The shipped weights come from the defaults (2,500 steps, batch 32, seed 0, one thread):
2,623 s (44 min) on 2 CPU cores shared with three other jobs (load 2.5-5): 3.6 s/step for
the first 100 steps while the others took most of the core, then 0.78-1.05 s/step (final
loss 0.047). Chosen by 16-step timings at load 2 (patch 2, width 64: 4 blocks 0.85 s/step,
5 blocks 1.12; width 96, 4 blocks 0.93). One thread, not two: two took 2.5 s/step at load 2-3,
one 0.93. The token tables
train as ``KeptRowsEmbedding`` (only the prompts' rows): the same logged losses as the full
tables (checked at steps 25 and 50), without the optimiser and EMA work on 6.3M dead
parameters (a noisy profile put that near a quarter of a step). Their samples (20 Euler steps,
CFG 4): 200 of 200 recognised as the prompted digit by an independent SVC
(benchmarks/digits_quality.py --model digits-flow), and as varied within a prompt as
``digits``' (benchmarks/digits_variety.py: 0.082 at 32 px, ``digits`` 0.081). Looked at (the
README's grid): no patch edges; every row reads as its digit, the crossed sevens least clearly
(a faint top bar), and one of the four ones is a broken stroke.

The earlier recipe (patch 4, width 64, 5 blocks, 2,600 steps; 200 of 200 for the SVC at CFG 8)
drew 4x4-pixel blocks with visible edges, and two, three, five, seven, eight and nine were
unreadable at 32 px; patch 2 with 3 blocks of width 64 (2,000 steps) lost the blocks but drew
wrong shapes (94%, threes 45%).

Same seed, thread count, torch version and machine type give the same bits: every draw
comes from one seeded generator in a fixed order, with
``torch.use_deterministic_algorithms(True)`` on while training.

Without ``--out`` the files go into ``draft_core/models/digits_flow/weights/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from draft_core.models.digits import data as D
from draft_core.models.digits import pack_text_encoder_state
from draft_core.models.digits.train import (
    EMA,
    TEXT_WIDTH,
    TOKENIZER_MAX_LENGTH,
    LossLog,
    PromptedBatches,
    deterministic,
    lr_factor,
    text_config,
    write_json,
)
from draft_core.models.digits_flow import MAX_SEQUENCE_LENGTH, WEIGHTS_DIR, DigitsFlowComponents, sd3_pipeline

# TEXT_WIDTH (64) is each CLIP encoder's width and projection; the two concatenate to 128.
PATCH_SIZE = 2  # 2x2 tokens (256 of them): patch 4's tokens drew visible 4x4 blocks
WIDTH = 96  # transformer inner dim = heads x head_dim
HEADS = 6
LAYERS = 4


def transformer_config(width: int = WIDTH, heads: int = HEADS, layers: int = LAYERS, patch: int = PATCH_SIZE) -> dict:
    if width % heads:
        raise ValueError(f"width {width} is not a multiple of heads {heads}.")
    return dict(
        sample_size=D.IMAGE_SIZE,
        patch_size=patch,
        in_channels=3,
        out_channels=3,
        num_layers=layers,
        attention_head_dim=width // heads,
        num_attention_heads=heads,
        joint_attention_dim=2 * TEXT_WIDTH,  # both CLIPs' penultimate states side by side
        caption_projection_dim=width,
        pooled_projection_dim=2 * TEXT_WIDTH,  # both text_embeds side by side
        pos_embed_max_size=D.IMAGE_SIZE // patch,
    )


def scheduler_config() -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler

    # shift 1: SD3's 3.0 moves steps toward high noise for 1024 px images, whose larger
    # size keeps more signal at a given noise level; 32 px needs no such move.
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return {k: v for k, v in sched.config.items() if not k.startswith("_")} | {
        "_class_name": "FlowMatchEulerDiscreteScheduler"
    }


def new_components(seed: int, sizes: dict | None = None) -> DigitsFlowComponents:
    """Freshly initialised modules (from ``seed``), in train mode."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    from draft_core.models.tokenizer import offline_clip_tokenizer

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**transformer_config(**(sizes or {}))).train()
    text_encoder = CLIPTextModelWithProjection(text_config()).train()
    text_encoder_2 = CLIPTextModelWithProjection(text_config()).train()
    return DigitsFlowComponents(
        transformer=transformer,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=offline_clip_tokenizer(model_max_length=TOKENIZER_MAX_LENGTH),
        tokenizer_2=offline_clip_tokenizer(model_max_length=TOKENIZER_MAX_LENGTH),
        scheduler_config=scheduler_config(),
        meta={"max_sequence_length": MAX_SEQUENCE_LENGTH},
    )


class KeptRowsEmbedding(torch.nn.Module):
    """A token embedding that trains only the rows of ``kept_ids``; every other id maps to a zero row.

    Training-time stand-in for a CLIP encoder's 49,408-row table: the prompts use about 30
    tokens, and a dense table's gradient, AdamW moments and EMA copy cost a quarter of a
    step here for rows that never change what the model computes (their gradient is zero;
    the saved file zeroes them anyway). ``expand()`` gives the standard ``nn.Embedding`` back.
    """

    def __init__(self, table: torch.Tensor, kept_ids: list[int]) -> None:
        super().__init__()
        kept = torch.tensor(kept_ids, dtype=torch.int64)
        self.rows = torch.nn.Parameter(table[kept].detach().clone())  # the same initial values as the table's
        lookup = torch.full((table.shape[0],), len(kept_ids), dtype=torch.int64)
        lookup[kept] = torch.arange(len(kept_ids))
        self.register_buffer("lookup", lookup, persistent=False)
        self.register_buffer("kept", kept, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = torch.cat([self.rows, self.rows.new_zeros(1, self.rows.shape[1])])
        return F.embedding(self.lookup[input_ids], rows)

    def expand(self) -> torch.nn.Embedding:
        table = torch.zeros(self.lookup.shape[0], self.rows.shape[1], dtype=self.rows.dtype)
        table[self.kept] = self.rows.detach()
        return torch.nn.Embedding.from_pretrained(table, freeze=False)


def _swap_token_table(encoder: torch.nn.Module, make) -> None:
    embeddings = encoder.text_model.embeddings
    embeddings.token_embedding = make(embeddings.token_embedding)


class MemoTokenizer:
    """Wraps a tokenizer so that repeated identical calls (the same 61 prompts every step) tokenize once.

    Returns the first call's tensors again; encode_prompt only reads them."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer, self._cache = tokenizer, {}

    def __call__(self, text, **kwargs):
        key = (tuple(text) if isinstance(text, list) else text, tuple(sorted(kwargs.items())))
        if key not in self._cache:
            self._cache[key] = self._tokenizer(text, **kwargs)
        return self._cache[key]

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def flow_batch(x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, timestep [B] = 1000 sigma, target eps - x0) for clean x0 [B, C, H, W]; sigma ~ logit-normal(0, 1)."""
    noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=gen, dtype=x0.dtype))
    s = sigma.view(-1, 1, 1, 1)
    return (1 - s) * x0 + s * noise, sigma * 1000, noise - x0


def train_flow(
    steps: int,
    seed: int,
    batch: int = 32,
    lr: float = 1e-3,
    log_every: int = 100,
    sizes: dict | None = None,
    on_step=None,
) -> dict:
    """Train from scratch; ``on_step(step, loss)`` is called after every step (tests use it)."""
    images, labels = D.load_images()
    prompts = D.all_prompts()  # [10 * P + 1]; the last is ""

    parts = new_components(seed, sizes)
    prompt_ids = parts.tokenizer(
        prompts, padding="max_length", max_length=TOKENIZER_MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    kept = sorted(set(prompt_ids.flatten().tolist()))
    transformer, te1, te2 = parts.transformer, parts.text_encoder, parts.text_encoder_2
    for encoder in (te1, te2):
        _swap_token_table(encoder, lambda emb: KeptRowsEmbedding(emb.weight, kept))
    parts.tokenizer, parts.tokenizer_2 = MemoTokenizer(parts.tokenizer), MemoTokenizer(parts.tokenizer_2)
    pipe = sd3_pipeline(parts)
    gen = torch.Generator().manual_seed(seed)

    params = [p for m in (transformer, te1, te2) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, min(100, steps // 10))
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    emas = [EMA(m, 0.999) for m in (transformer, te1, te2)]

    batches, log = PromptedBatches(images, labels, batch, gen), LossLog(steps, log_every)
    for step in range(steps):
        x0, which = batches.next()
        x_t, timestep, target = flow_batch(x0, gen)

        # All 61 prompts through the pipeline's own encode_prompt (cheap at this size), then
        # pick each sample's row: gradients reach both text encoders.
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts,
            None,
            None,
            device=torch.device("cpu"),
            do_classifier_free_guidance=False,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        pred = transformer(
            hidden_states=x_t,
            timestep=timestep,
            encoder_hidden_states=embeds[which],
            pooled_projections=pooled[which],
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred, target)

        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        for ema, m in zip(emas, (transformer, te1, te2)):
            ema.update(m)

        log.add(step, loss.item())
        if on_step is not None:
            on_step(step, loss.detach())

    for ema in emas[1:]:
        _swap_token_table(ema.module, lambda emb: emb.expand())
    return {
        "transformer": emas[0].module,
        "text_encoder": emas[1].module,
        "text_encoder_2": emas[2].module,
        "kept_token_ids": kept,
        **log.summary(),
        "params": {
            name: sum(p.numel() for p in m.parameters())
            for name, m in (
                ("transformer", emas[0].module),
                ("text_encoder", emas[1].module),
                ("text_encoder_2", emas[2].module),
            )
        },
    }


def save_model(out: Path, result: dict) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    transformer = result["transformer"]
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(out / "transformer.safetensors"))
    write_json(out / "transformer_config.json", {k: v for k, v in transformer.config.items() if not k.startswith("_")})
    for stem in ("text_encoder", "text_encoder_2"):
        encoder = result[stem]
        save_file(
            pack_text_encoder_state(encoder.state_dict(), result["kept_token_ids"]), str(out / f"{stem}.safetensors")
        )
        write_json(out / f"{stem}_config.json", encoder.config.to_dict())
    write_json(out / "scheduler_config.json", scheduler_config())
    write_json(
        out / "model.json",
        {
            "name": "digits-flow",
            "pipeline": "StableDiffusion3Pipeline with vae=None, text_encoder_3=None, tokenizer_3=None",
            "tokenizer": "offline_clip_tokenizer (SD 1.x's CLIP BPE), the same for tokenizer and tokenizer_2",
            "tokenizer_max_length": TOKENIZER_MAX_LENGTH,
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
            "image_size": D.IMAGE_SIZE,
            "pixels": "3 channels in [-1, 1]; image = (x / 2 + 0.5).clamp(0, 1)",
            "upsampling": "bilinear from 8x8, align_corners=False",
            "prompts": D.PROMPTS,
            "phrasings": D.PHRASINGS,
            "weights_dtype": "float32",
            "text_encoder_kept_token_ids": result["kept_token_ids"],
            "text_encoder_note": "token-embedding rows of tokens outside the training prompts are zeros",
        },
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write every file here (default: the package's weights/)")
    ap.add_argument("--steps", type=int, default=2500, help="training steps")
    ap.add_argument("--batch", type=int, default=32, help="batch size")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    # 1, not digits' 2: on the shared 2-core machine (load 6-8) two threads took 11 s/step, one 1.0 s/step.
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (part of what fixes the bits)")
    ap.add_argument("--width", type=int, default=WIDTH, help="transformer width (heads x head_dim)")
    ap.add_argument("--heads", type=int, default=HEADS)
    ap.add_argument("--layers", type=int, default=LAYERS)
    ap.add_argument("--patch", type=int, default=PATCH_SIZE)
    ap.add_argument("--log-every", type=int, default=100)
    args = ap.parse_args(argv)
    out = args.out or WEIGHTS_DIR
    sizes = {"width": args.width, "heads": args.heads, "layers": args.layers, "patch": args.patch}

    import diffusers
    import transformers

    with deterministic(args.threads), torch.random.fork_rng(devices=[]):
        result = train_flow(args.steps, args.seed, batch=args.batch, lr=args.lr, sizes=sizes, log_every=args.log_every)
        save_model(out, result)
        write_json(
            out / "training_log.json",
            {
                "command": "python -m draft_core.models.digits_flow.train "
                + " ".join(sys.argv[1:] if argv is None else argv),
                "steps": args.steps,
                "batch": args.batch,
                "lr": args.lr,
                "seed": args.seed,
                "threads": args.threads,
                "sizes": sizes,
                "seconds": round(result["seconds"], 1),
                "final_loss": result["final_loss"],
                "history": result["history"],
                "params": result["params"],
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
            },
        )
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
