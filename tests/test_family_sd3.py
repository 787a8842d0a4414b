"""The ``sd3`` family (SD3/SD3.5: MMDiT, rectified flow) on ``tiny-random-sd3``: prompts and sampling
equal to diffusers' StableDiffusion3Pipeline, DRaFT's gradient against finite differences in float64,
every gradient estimator on it, its LoRA files in diffusers' loader, the CLI, and its input errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_support import run_error
from diffusers import StableDiffusion3Pipeline
from model_fixtures import LinearReward, PooledLinearReward, assert_central_differences, grads_of

import draft_core.models.loading
from draft_core.cli import main
from draft_core.config import load_config
from draft_core.errors import DraftError
from draft_core.lora import LoraSpec, add_lora, apply_loras, save_lora
from draft_core.models.families.sd3 import SD3Model, flow_shift_mu
from draft_core.models.loading import load_model
from draft_core.models.tiny_sd3 import SD35_SCHEDULER_CONFIG, build_tiny_random_sd3
from draft_core.plugins import load_registry
from draft_core.plugins.protocols import StepInputs
from draft_estimators import DeterministicPolicyGradient, FullBackprop, LowVariance, ReFL, TruncatedBackprop
from draft_estimators.kl import KLRegularized

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a cat", "a dog"]
DYNAMIC = {**SD35_SCHEDULER_CONFIG, "use_dynamic_shifting": True, "base_image_seq_len": 4, "max_image_seq_len": 64}


def euler(steps: int = 3, guidance: float = 4.0):
    return load_registry().build("sampler", "euler", steps=steps, guidance_scale=guidance)


def with_lora(dtype=torch.float32, seed: int = 0, rank: int = 2, targets=None, **kw):
    """tiny-random-sd3 with a LoRA whose both factors are random (so every LoRA weight gets gradient)."""
    model = build_tiny_random_sd3(seed=seed, **kw).to(dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        params = add_lora(model, rank=rank, targets=targets, init=False)
    for p in params:
        p.data = p.data.to(dtype)
    return model, params


def rel_close(got: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Agreement to ``rel`` of the largest entry: float32 runs that differ only in how kernels round."""
    torch.testing.assert_close(got, expected, rtol=rel, atol=rel * expected.abs().max().item())


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_random_sd3()


# -- the family against StableDiffusion3Pipeline ------------------------------------------------------
@pytest.mark.parametrize("t5", [True, False], ids=["t5", "no-t5"])
def test_prompts_are_encoded_as_the_pipeline_encodes_them(t5):
    model = build_tiny_random_sd3(t5=t5)
    cond = model.encode_prompts(PROMPTS)
    embeds, negative, pooled, negative_pooled = model.pipeline().encode_prompt(PROMPTS, None, None, device="cpu")
    # CLIP-L (16) and CLIP-G (24) side by side, zero-padded to T5's 48, then T5's 256 tokens (zeros without T5).
    assert cond.cond.shape == (2, 77 + 256, 48) and cond.pooled.shape == (2, 40)
    assert torch.equal(cond.cond, embeds) and torch.equal(cond.pooled, pooled)
    assert cond.cond[:, :77, 40:].abs().max() == 0 and (cond.cond[:, 77:].abs().max() > 0) == t5
    # The empty prompt is encoded once, batch 1 (the pipeline encodes it per row): float32 rounding apart.
    assert cond.uncond.shape == (1, 333, 48)
    rel_close(cond.uncond.expand(2, -1, -1), negative, 1e-6)
    rel_close(cond.uncond_pooled.expand(2, -1), negative_pooled, 1e-6)


def test_dynamic_shift_mu_is_the_pipelines():
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    assert build_tiny_random_sd3().timestep_kwargs(4) == {}  # SD3.5 shifts by a constant 3
    model = build_tiny_random_sd3(scheduler_config=DYNAMIC)
    # 8x8 latents in 2x2 patches: 16 tokens; the shifts are the scheduler's defaults (max_shift 1.15, not
    # the pipeline's own fallback 1.16, which it never uses because scheduler.config always has the key).
    mu = calculate_shift(16, 4, 64, 0.5, 1.15)
    assert model.timestep_kwargs(4) == {"mu": pytest.approx(mu, rel=1e-12)}
    assert flow_shift_mu(4096, {}) == pytest.approx(1.16, rel=1e-12)


@pytest.mark.parametrize("config", [SD35_SCHEDULER_CONFIG, DYNAMIC], ids=["shift3", "dynamic"])
def test_euler_sampling_equals_the_pipeline(config):
    """draft's euler sampler with CFG, 4 steps, decoded: StableDiffusion3Pipeline's images for the same latents."""
    model = build_tiny_random_sd3(scheduler_config=config)
    sampler = euler(steps=4, guidance=4.5)
    noise = model.make_noise(2, torch.Generator().manual_seed(3))
    with torch.no_grad():
        latents = sampler.sample(model, model.encode_prompts(PROMPTS), noise)
        ours = model.decode(latents)
    pipe = model.pipeline()
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=4, guidance_scale=4.5, latents=noise)
    theirs_latents = pipe(PROMPTS, output_type="latent", **kw).images
    theirs = pipe(PROMPTS, output_type="pt", **kw).images
    # Measured: latents 4e-7 and images 2e-6 of their largest entry apart (the empty prompt encoded at batch 1
    # here, per row there); guidance 4.4 for 4.5 or one step fewer moves them by >1e-3.
    rel_close(latents, theirs_latents, 2e-6)
    rel_close(ours, theirs, 1e-5)


# -- gradients ---------------------------------------------------------------------------------------
def _fd_case(estimator, steps=3, seed=0):
    # SD3 Medium's blocks: SD3.5's q/k RMSNorm takes its variance in float32 inside diffusers, which puts
    # ~1e-7 relative noise into a float64 forward pass, more than central differences can resolve.
    model, params = with_lora(torch.float64, sd35=False)
    sampler = euler(steps=steps, guidance=3.0)
    cond = model.encode_prompts(["a cat"])
    noise = model.make_noise(1, torch.Generator().manual_seed(seed), dtype=torch.float64)
    inputs = StepInputs(
        model,
        sampler,
        LinearReward((1, 3, 64, 64), torch.float64),
        cond,
        noise,
        torch.Generator().manual_seed(seed + 100),
    )
    grads, _ = grads_of(estimator, inputs, params)
    return model, params, sampler, inputs, grads


def test_full_draft_matches_central_differences_in_float64():
    model, params, sampler, inputs, grads = _fd_case(FullBackprop(checkpoint=True))

    def loss_at():
        with torch.no_grad():
            x0 = sampler.sample(model, inputs.cond, inputs.noise)
            return -inputs.reward(model.decode(x0), inputs.cond.prompts).mean().item()

    # float64 throughout (the scheduler's σ are float32 numbers, exact in float64). Measured relative errors:
    # 3e-3 at h = 1e-3, 8e-7 at 1e-4 (the O(h²) truncation), 8e-9 at 1e-5 (rounding, ~1e-16·L/h, not yet felt).
    assert_central_differences(loss_at, grads, params, directions=2, h=1e-5, rel=1e-6)


def test_draft_k_with_k_equal_to_the_steps_is_full_draft():
    _, _, _, _, full = _fd_case(FullBackprop(checkpoint=False))
    _, _, _, _, k_is_t = _fd_case(TruncatedBackprop(k=3, checkpoint=True))
    for a, b in zip(full, k_is_t):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * max(g.abs().max().item() for g in full))


ESTIMATORS = {
    "draft": lambda: FullBackprop(),
    "draft-k": lambda: TruncatedBackprop(k=1),
    "draft-k-range": lambda: TruncatedBackprop(k=None, k_range=[1, 2]),
    "draft-lv": lambda: LowVariance(n=1),
    "refl": lambda: ReFL(m=2),
    "dpg": lambda: DeterministicPolicyGradient(states=1, critic_rank=2),
    "kl": lambda: KLRegularized(TruncatedBackprop(k=2), 0.1),
}


@pytest.fixture(scope="module")
def trained():
    return with_lora()


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_takes_a_step_on_sd3(name, trained):
    model, params = trained
    probe, t = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor(500.0)
    probe_cond = model.encode_prompts(["a probe"])
    with torch.no_grad():
        before = model.denoise(probe, t, probe_cond, 3.0)
    cond = model.encode_prompts(PROMPTS)
    noise = model.make_noise(2, torch.Generator().manual_seed(1))
    inputs = StepInputs(
        model,
        euler(steps=3, guidance=3.0),
        PooledLinearReward(torch.float32),
        cond,
        noise,
        torch.Generator().manual_seed(2),
    )
    grads, out = grads_of(ESTIMATORS[name](), inputs, params, split=name in ("draft-lv", "dpg"))
    flat = torch.cat([g.flatten() for g in grads])
    assert torch.isfinite(out.loss) and torch.isfinite(flat).all() and flat.abs().max() > 0
    lora = {id(p) for p in params}
    assert not [n for n, p in model.transformer.named_parameters() if id(p) not in lora and p.grad is not None]
    assert all(
        p.grad is None
        for m in (model.text_encoder, model.text_encoder_2, model.text_encoder_3, model.vae)
        for p in m.parameters()
    )
    with torch.no_grad():
        assert torch.equal(model.denoise(probe, t, probe_cond, 3.0), before)  # adapters on, weights unmoved


# -- LoRA files ----------------------------------------------------------------------------------------
def _lora_folder(tiny, folder, seed, rank=2, alpha=None, targets=None):
    model = copy.copy(tiny)
    model.transformer = copy.deepcopy(tiny.transformer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        add_lora(model, rank=rank, alpha=alpha, targets=targets, init=False)
    return save_lora(model, folder).parent


@pytest.fixture(scope="module")
def loras(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3-loras")
    return (
        _lora_folder(tiny, root / "a", 1, rank=2, alpha=3, targets="attention+ff"),
        _lora_folder(tiny, root / "b", 2, rank=3, alpha=1),
    )


@torch.no_grad()
def pipeline_latents(pipe, steps=2):
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=3.0, latents=noise, output_type="latent").images


def _with_loras(tiny, specs):
    model = copy.copy(tiny)
    model.transformer = copy.deepcopy(tiny.transformer)
    apply_loras(model, specs)
    return model


def test_lora_loads_in_the_vanilla_pipeline_and_samples_the_same(tiny, loras):
    for folder in loras:
        ours = pipeline_latents(_with_loras(tiny, [LoraSpec(folder, 1.0)]).pipeline())
        pipe = copy.copy(tiny).pipeline()
        pipe.transformer = copy.deepcopy(tiny.transformer)
        pipe.load_lora_weights(str(folder))  # StableDiffusion3Pipeline's own loader
        theirs, base = pipeline_latents(pipe), pipeline_latents(tiny.pipeline())
        assert (theirs - base).abs().max() > 1e-3  # the LoRA matters
        rel_close(ours, theirs, 1e-5)  # float32 forward passes with the same adapters (peft both)


def test_default_targets_are_the_joint_attention(tiny, loras):
    from safetensors.torch import load_file

    keys = load_file(loras[1] / "pytorch_lora_weights.safetensors").keys()
    modules = {k.split(".lora_")[0].split(".", 3)[-1] for k in keys}
    assert modules == {
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_q_proj",
        "attn.add_k_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
    }  # attn2 (SD3.5's dual attention) and ff left alone
    assert all(k.startswith("transformer.") for k in keys)


def test_lora_mix_and_fuse_on_sd3(tiny, loras, tmp_path, capsys):
    a, b = loras
    specs = [LoraSpec(a, 0.5), LoraSpec(b, 0.75)]
    assert main(["lora", "mix", f"{a}:0.5", f"{b}:0.75", "--out", str(tmp_path / "mix")]) == 0
    pipe = copy.copy(tiny).pipeline()
    pipe.transformer = copy.deepcopy(tiny.transformer)
    pipe.load_lora_weights(str(tmp_path / "mix"))
    expected = pipeline_latents(_with_loras(tiny, specs).pipeline())
    rel_close(pipeline_latents(pipe), expected, 1e-5)

    base = tiny.save_pretrained(tmp_path / "base")
    assert (
        main(
            [
                "lora",
                "fuse",
                "--model",
                str(base),
                "--lora",
                f"{a}:0.5",
                "--lora",
                f"{b}:0.75",
                "--out",
                str(tmp_path / "fused"),
            ]
        )
        == 0
    )
    fused = StableDiffusion3Pipeline.from_pretrained(tmp_path / "fused")  # an ordinary diffusers pipeline
    assert not any("lora" in n for n, _ in fused.transformer.named_parameters())
    # W + ΔW against W·x + B(A·x): float32 rounding apart (~1e-6 measured); a missing LoRA is >1e-3 off.
    rel_close(pipeline_latents(fused), expected, 1e-5)


def test_an_sd_lora_on_sd3_is_one_paragraph(tmp_path, capsys):
    from draft_core.models.tiny import build_tiny_random

    sd = build_tiny_random()
    add_lora(sd, init=False)
    folder = save_lora(sd, tmp_path / "sd-lora").parent
    with pytest.raises(DraftError, match="LoRA of a unet") as info:
        apply_loras(build_tiny_random_sd3(), [LoraSpec(folder, 1.0)], model_name="tiny-random-sd3")
    assert "\n" not in str(info.value) and "tiny-random-sd3" in str(info.value)
    message = run_error(
        capsys,
        "sample",
        "--model",
        "tiny-random-sd3",
        "--sampler",
        "euler",
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--lora",
        str(folder),
        "--out",
        str(tmp_path / "s"),
    )
    assert "LoRA of a unet" in message and not (tmp_path / "s").exists()


# -- folders -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t5", [True, False], ids=["t5", "no-t5"])
def test_saved_folder_loads_in_diffusers_and_back(t5, tmp_path):
    model = build_tiny_random_sd3(t5=t5, scheduler_config=DYNAMIC)
    folder = model.save_pretrained(tmp_path / "m")
    # diffusers loads a folder whose T5 is null when told so, as it loads SD3 without T5 from the Hub.
    pipe = StableDiffusion3Pipeline.from_pretrained(
        folder, **({} if t5 else dict(text_encoder_3=None, tokenizer_3=None))
    )
    assert (pipe.text_encoder_3 is None) == (not t5) and pipe.scheduler.config.use_dynamic_shifting
    back = load_model(str(folder), device="cpu", dtype=torch.float32)
    assert isinstance(back, SD3Model) and back.scheduler_config["use_dynamic_shifting"]
    cond, cond_back = model.encode_prompts(PROMPTS), back.encode_prompts(PROMPTS)
    x, t = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(700.0)
    with torch.no_grad():
        assert torch.equal(model.denoise(x, t, cond, 2.0), back.denoise(x, t, cond_back, 2.0))
    assert torch.equal(pipeline_latents(pipe), pipeline_latents(model.pipeline()))


def test_pixel_space_sd3_decodes_without_a_vae(tmp_path):
    """The shape of the embedded digits-flow model: an SD3 transformer on pixels, no T5, no VAE."""
    from diffusers import SD3Transformer2DModel

    from draft_core.models.tiny_sd3 import tiny_transformer_config

    tiny = build_tiny_random_sd3(t5=False)
    model = SD3Model(
        SD3Transformer2DModel(**tiny_transformer_config(sample_size=8, in_channels=1)),
        tiny.text_encoder,
        tiny.text_encoder_2,
        tiny.tokenizer,
        tiny.tokenizer_2,
        SD35_SCHEDULER_CONFIG,
    )
    assert model.sample_shape == (1, 8, 8) and model.image_size == (8, 8)
    with torch.no_grad():
        images = model.decode(euler(steps=2).sample(model, model.encode_prompts(PROMPTS), model.make_noise(2)))
    assert images.shape == (2, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    back = load_model(str(model.save_pretrained(tmp_path / "px")), device="cpu", dtype=torch.float32)
    assert back.vae is None and back.text_encoder_3 is None and back.sample_shape == (1, 8, 8)


# -- the CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if any model family is built or loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input error was reported")

    monkeypatch.setattr(draft_core.models.loading, "load_model", refuse)
    monkeypatch.setattr(SD3Model, "__init__", refuse)


def test_a_diffusion_sampler_on_sd3_exits_2_before_weights_load(capsys, no_weights, tmp_path):
    message = run_error(
        capsys,
        "train",
        "--preset",
        "quickstart",
        "--set",
        "model.name=tiny-random-sd3",
        "--set",
        "sampler.name=ddim",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    )
    assert "'sd3' family" in message and "euler" in message
    assert not (tmp_path / "run").exists()


def test_an_unsupported_pipeline_exits_2_listing_the_supported_ones(capsys, no_weights, tmp_path):
    folder = tmp_path / "kandinsky"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    message = run_error(
        capsys,
        "train",
        "--preset",
        "quickstart",
        "--set",
        f"model.name={folder}",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    )
    assert (
        "KandinskyPipeline" in message
        and "StableDiffusion3Pipeline" in message
        and "StableDiffusionPipeline" in message
    )


def test_train_and_sample_on_tiny_random_sd3(capsys, tmp_path):
    """`draft train --model tiny-random-sd3` with the default config: the family's sampler (euler) is chosen."""
    sets = [
        "train.steps=2",
        "sampler.steps=2",
        "estimator.name=draft-k",
        "estimator.k=1",
        "train.batch_size=1",
        "train.sample_every=0",
        "train.sample_per_prompt=1",
        "train.sample_prompts=[a cat]",
        "lora.rank=2",
    ]
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                "tiny-random-sd3",
                "--out",
                str(run),
                "--no-progress",
                *sum((["--set", s] for s in sets), []),
            ]
        )
        == 0
    )
    config = load_config(run / "config.yaml")
    assert config.model.name == "tiny-random-sd3" and config.sampler["name"] == "euler"
    assert (run / "lora" / "pytorch_lora_weights.safetensors").exists()
    capsys.readouterr()
    assert (
        main(
            [
                "sample",
                "--model",
                "tiny-random-sd3",
                "--prompt",
                "a cat",
                "--n",
                "2",
                "--steps",
                "2",
                "--guidance",
                "4",
                "--lora",
                str(run / "lora"),
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    assert "wrote 2 images" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["0000.png", "0001.png", "grid.png"]
    from PIL import Image

    with Image.open(tmp_path / "s" / "0000.png") as img:
        assert img.size == (64, 64) and "Sampler: euler" in img.text["parameters"]


def test_a_config_without_a_sampler_name_gets_euler_and_keeps_its_steps(capsys, no_weights, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {name: tiny-random-sd3}\nsampler: {steps: 7, guidance_scale: 4.5}\n")
    assert main(["train", str(config), "--dry-run", "--out", str(tmp_path / "run")]) == 0
    sampler = yaml.safe_load(capsys.readouterr().out.split("\n# ")[0])["sampler"]
    assert sampler == {"name": "euler", "steps": 7, "guidance_scale": 4.5}


def test_draft_sample_refuses_a_diffusion_sampler_before_weights_load(capsys, no_weights, tmp_path):
    message = run_error(
        capsys,
        "sample",
        "--model",
        "tiny-random-sd3",
        "--sampler",
        "ddim",
        "--prompt",
        "a cat",
        "--out",
        str(tmp_path / "s"),
    )
    assert "'sd3' family" in message and "euler" in message


def test_the_sd35_pickscore_config_validates():
    from draft_core.training.components import build_components
    from draft_core.training.preflight import check_family

    config = load_config(ROOT / "configs" / "sd3-pickscore.yaml")
    assert config.model.name == "stabilityai/stable-diffusion-3.5-medium" and config.sampler["name"] == "euler"
    components = build_components(config)
    check_family(config, components, SD3Model)  # a flow sampler, targets the family names
