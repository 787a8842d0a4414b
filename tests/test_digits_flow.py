"""The shipped ``digits-flow`` model: its files, its SD3 conditioning, its Euler sampler, its training script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib
import torch

from draft_core.models.digits import data as D
from draft_core.models.digits_flow import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    WEIGHTS_DIR,
    build_digits_flow,
    sd3_pipeline,
    train,
)
from draft_core.models.digits_flow.euler import denoise, encode, flow_sigmas, sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts():
    return build_digits_flow()


# -- the files -------------------------------------------------------------------------------


def test_weights_are_small_and_ship_with_the_package():
    files = sorted(WEIGHTS_DIR.iterdir())
    names = {p.name for p in files}
    assert {
        "transformer.safetensors",
        "transformer_config.json",
        "text_encoder.safetensors",
        "text_encoder_config.json",
        "text_encoder_2.safetensors",
        "text_encoder_2_config.json",
        "scheduler_config.json",
        "model.json",
        "training_log.json",
    } <= names
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["draft_core"]
    shipped = {p for pattern in patterns for p in (ROOT / "draft_core").glob(pattern)}
    assert set(files) <= shipped, "pyproject's package-data misses digits-flow weights"


def test_missing_weights_name_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="draft_core.models.digits_flow.train"):
        build_digits_flow(tmp_path)


def test_build_is_offline_frozen_and_sized(parts, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    built = build_digits_flow()
    assert torch.equal(torch.rand(3), expected)  # the caller's stream untouched
    cfg = built.transformer.config
    assert (cfg.sample_size, cfg.in_channels, cfg.out_channels) == (D.IMAGE_SIZE, 3, 3)
    assert cfg.sample_size % cfg.patch_size == 0
    te1, te2 = built.text_encoder.config, built.text_encoder_2.config
    # SD3's arithmetic: both CLIPs' hidden states side by side fit joint_attention_dim, both
    # projected text embeddings side by side are the pooled projection, and the caption
    # projection meets the image stream at the transformer's width.
    assert cfg.joint_attention_dim >= te1.hidden_size + te2.hidden_size
    assert cfg.pooled_projection_dim == te1.projection_dim + te2.projection_dim
    assert cfg.caption_projection_dim == cfg.num_attention_heads * cfg.attention_head_dim
    assert built.scheduler_config["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert built.tokenizer.model_max_length == built.meta["tokenizer_max_length"]
    for module in (built.transformer, built.text_encoder, built.text_encoder_2):
        assert not any(m.training for m in module.modules())
        assert not any(p.requires_grad for p in module.parameters())


def test_token_tables_keep_only_training_tokens(parts):
    ids = parts.tokenizer(
        D.all_prompts(),
        padding="max_length",
        max_length=parts.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    assert (ids[:, -1] == parts.tokenizer.pad_token_id).all()  # no training prompt is truncated
    used = torch.zeros(parts.text_encoder.config.vocab_size, dtype=torch.bool)
    used[ids.flatten()] = True
    for encoder in (parts.text_encoder, parts.text_encoder_2):
        table = encoder.get_input_embeddings().weight
        assert (table[used].abs().sum(dim=1) > 0).all()
        assert (table[~used] == 0).all()


# -- conditioning ----------------------------------------------------------------------------


def test_conditioning_is_sd3_arithmetic(parts):
    """encode() (the pipeline's encode_prompt) equals SD3's recipe written out: both CLIPs'
    penultimate states side by side, zero-padded to joint_attention_dim, then the zero T5 block."""
    prompts = [D.PROMPTS[3], "the number seven", ""]
    embeds, pooled = encode(parts, prompts)
    hidden, pools = [], []
    for tok, enc in ((parts.tokenizer, parts.text_encoder), (parts.tokenizer_2, parts.text_encoder_2)):
        ids = tok(
            prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        with torch.no_grad():
            out = enc(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pools.append(out.text_embeds)
    clip = torch.cat(hidden, dim=-1)
    joint = parts.transformer.config.joint_attention_dim
    length = parts.tokenizer.model_max_length
    assert embeds.shape == (3, length + parts.max_sequence_length, joint)
    assert torch.equal(embeds[:, :length, : clip.shape[-1]], clip)
    assert (embeds[:, :length, clip.shape[-1] :] == 0).all() and (embeds[:, length:] == 0).all()
    assert torch.equal(pooled, torch.cat(pools, dim=-1))
    assert not torch.equal(embeds[0], embeds[1])  # the prompt matters


# -- the sampler -----------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 4, DEFAULT_STEPS, 28])
def test_flow_sigmas_are_the_schedulers(parts, steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = dict(parts.scheduler_config, shift=shift)
    sched = FlowMatchEulerDiscreteScheduler.from_config(config)
    sched.set_timesteps(steps)
    assert torch.equal(flow_sigmas(config, steps), sched.sigmas)


def test_flow_sigmas_refuse_what_they_do_not_implement(parts):
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        flow_sigmas(dict(parts.scheduler_config, use_dynamic_shifting=True), 4)
    with pytest.raises(ValueError, match="steps"):
        flow_sigmas(parts.scheduler_config, 0)


def test_one_exact_euler_step_recovers_the_training_pair():
    """The training target v = eps - x0 at x_t = (1 - s) x0 + s eps is the flow's velocity: an Euler
    step from s to 0 gives x0 and one from s to 1 gives eps (float64, so only rounding remains)."""
    x0 = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    x_t, timestep, v = train.flow_batch(x0, torch.Generator().manual_seed(1))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # its first draw
    s = (timestep / 1000).view(-1, 1, 1, 1)
    assert ((s > 0) & (s < 1)).all() and s.std() > 0
    torch.testing.assert_close(x_t + (0 - s) * v, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(x_t + (1 - s) * v, noise, rtol=0, atol=1e-12)


@pytest.mark.parametrize("guidance", [1.0, DEFAULT_GUIDANCE])
def test_euler_loop_equals_stable_diffusion_3_pipeline(parts, guidance):
    """The same ops in the same order on the same batch ([uncond; cond]) as diffusers' own loop: equal bits."""
    pipe = sd3_pipeline(parts)
    pipe.set_progress_bar_config(disable=True)
    prompts = [D.PROMPTS[2], D.PROMPTS[7]]
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    size = parts.image_size * pipe.vae_scale_factor  # the pipeline divides by it; its "latents" are our pixels
    with torch.no_grad():
        ref = pipe(
            prompt=prompts,
            num_inference_steps=4,
            guidance_scale=guidance,
            latents=noise.clone(),
            height=size,
            width=size,
            output_type="latent",
            max_sequence_length=parts.max_sequence_length,
        ).images
        uncond = encode(parts, [""] * 2) if guidance > 1 else None
        mine = denoise(parts, noise.clone(), encode(parts, prompts), uncond, steps=4, guidance=guidance)
    assert torch.equal(mine, ref)
    assert not torch.equal(mine, noise)


def test_guidance_needs_the_unconditional_embeddings(parts):
    with pytest.raises(ValueError, match="unconditional"):
        denoise(parts, torch.zeros(1, 3, 32, 32), encode(parts, ["one"]), None, steps=2, guidance=3.0)


def test_default_samples_are_images_of_the_prompted_digit(parts):
    with torch.no_grad():
        images = sample(parts, D.PROMPTS, torch.Generator().manual_seed(0))
    assert images.shape == (10, 3, 32, 32) and torch.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1
    assert (images.flatten(1).std(dim=1) > 0.2).all()  # ink and background, not blank
    predicted = torch.from_numpy(D.fit_reference_svc().predict(D.to_sklearn_pixels(images)))
    correct = (predicted == torch.arange(10)).sum().item()
    # benchmarks/digits_quality.py measured 100% (200 of 200) for the shipped weights at these
    # defaults (results/digits_flow_quality.json). The bound is test_digits.py's: at a true rate of 0.9, fewer than 7 of 10 right has probability 1.3%;
    # a model that ignores its prompt (~0.1) reaches 7 with probability 1e-5.
    assert correct >= 7, f"SVC: {correct}/10 right, predictions {predicted.tolist()}"


# -- the training script ---------------------------------------------------------------------


def test_training_is_deterministic(tmp_path):
    args = ["--steps", "3", "--batch", "8", "--threads", "1", "--log-every", "1"]
    train.main(["--out", str(tmp_path / "a"), "--seed", "3", *args])
    train.main(["--out", str(tmp_path / "b"), "--seed", "3", *args])
    train.main(["--out", str(tmp_path / "c"), "--seed", "4", *args])
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert set(files) == {p.name for p in WEIGHTS_DIR.iterdir()}
    for name in files:
        if name != "training_log.json":  # holds wall times
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    logs = [json.loads((tmp_path / d / "training_log.json").read_text()) for d in "abc"]
    assert [h["loss"] for h in logs[0]["history"]] == [h["loss"] for h in logs[1]["history"]]
    assert logs[0]["final_loss"] != logs[2]["final_loss"]  # the seed matters, so equality above means something
    assert (tmp_path / "a" / "transformer.safetensors").read_bytes() != (
        tmp_path / "c" / "transformer.safetensors"
    ).read_bytes()
    # the defaults' sizes, and build_digits_flow reads what the script wrote
    shipped = json.loads((WEIGHTS_DIR / "transformer_config.json").read_text())
    assert json.loads((tmp_path / "a" / "transformer_config.json").read_text()) == shipped
    assert build_digits_flow(tmp_path / "a").image_size == D.IMAGE_SIZE


# -- as an sd3-family model ------------------------------------------------------------------


def test_load_model_gives_an_sd3_model_that_samples_as_the_euler_loop(parts):
    from draft_core.models.families.sd3 import SD3Model
    from draft_core.models.loading import load_model
    from draft_core.samplers.flow import EulerSampler

    model = load_model("digits-flow", device="cpu")
    assert isinstance(model, SD3Model) and model.vae is None and model.text_encoder_3 is None
    assert model.max_sequence_length == parts.max_sequence_length and model.sample_shape == (3, 32, 32)
    noise = model.make_noise(2, torch.Generator().manual_seed(0))
    prompts = [D.PROMPTS[4], D.PROMPTS[9]]
    with torch.no_grad():
        family = model.decode(
            EulerSampler(steps=4, guidance_scale=DEFAULT_GUIDANCE).sample(model, model.encode_prompts(prompts), noise)
        )
        mine = sample(parts, prompts, steps=4, guidance=DEFAULT_GUIDANCE, noise=noise.clone())
    # Not bit-equal: the family encodes the empty prompt once as a batch of 1 (float32 GEMMs round
    # differently by batch size); a few float32 ulps per op, amplified by CFG over 4 steps.
    torch.testing.assert_close(family, mine, rtol=0, atol=1e-4)


def test_quickstart_flow_raises_the_reward(tmp_path):
    """The preset's run, shortened: fewer sampling steps and a larger lr, so a few steps show the rise."""
    from draft_core.cli import main

    out = tmp_path / "qsf"
    sets = [
        "train.steps=6",
        "sampler.steps=6",
        "train.lr=3e-3",
        "train.sample_every=0",
        "train.sample_per_prompt=1",
        "train.checkpoint_every=6",
    ]
    assert (
        main(
            [
                "train",
                "--preset",
                "quickstart-flow",
                "--out",
                str(out),
                "--no-progress",
                *sum((["--set", s] for s in sets), []),
            ]
        )
        == 0
    )
    rewards = [json.loads(line)["reward_mean"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rewards) == 6
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    assert last > first + 0.05, rewards
