"""The flux family on tiny-random-flux (FLUX.1-dev's classes at test size): sampling against diffusers'
FluxPipeline, DRaFT's gradients against finite differences, every estimator, LoRA files diffusers and
kohya/ComfyUI read, refusals before any weights load, and the CLI end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline
from model_fixtures import LinearReward, assert_central_differences, grads_of, patch_flux_rope_float64, step_inputs
from safetensors.torch import load_file, save_file

from draft_core.cli import main
from draft_core.errors import DraftError
from draft_core.lora import LoraSpec, add_lora, apply_loras, save_lora
from draft_core.lora.files import LoraModule
from draft_core.lora.kohya_flux import flux_kohya_state
from draft_core.models.families.flux import FluxModel, build_tiny_random_flux
from draft_core.plugins import load_registry

PROMPTS = ["a cat", "a dog"]
ROOT = Path(__file__).resolve().parents[1]


def euler(steps: int = 3, guidance: float = 3.5):
    return load_registry().build("sampler", "euler", steps=steps, guidance_scale=guidance)


def flux_with_lora(
    dtype=torch.float32, rank: int = 2, alpha: float | None = None, seed: int = 1, **kw
) -> tuple[FluxModel, list]:
    """tiny-random-flux with a LoRA on the default targets whose both factors are random."""
    model = build_tiny_random_flux(**kw).to(dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        params = add_lora(model, rank=rank, alpha=alpha, init=False)
    for p in params:
        p.data = p.data.to(dtype)
    return model, params


def pipeline_images(model: FluxModel, noise: torch.Tensor, steps: int, pipe=None, **kw) -> torch.Tensor:
    """FluxPipeline on the model's components from the same initial latents (packed, as it expects)."""
    pipe = pipe or model.pipeline()
    pipe.set_progress_bar_config(disable=True)
    b, c, h, w = noise.shape
    side = model.image_size[0]
    return pipe(
        PROMPTS,
        height=side,
        width=side,
        num_inference_steps=steps,
        output_type="pt",
        max_sequence_length=model.max_sequence_length,
        latents=FluxPipeline._pack_latents(noise, b, c, h, w),
        **kw,
    ).images


def draft_images(model: FluxModel, noise: torch.Tensor, sampler) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(sampler.sample(model, model.encode_prompts(PROMPTS), noise))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# -- sampling = FluxPipeline ----------------------------------------------------------------
@pytest.mark.parametrize("distilled", [True, False], ids=["dev-distilled-guidance", "schnell-true-cfg"])
def test_sampling_equals_flux_pipeline(distilled):
    """dev: guidance 3.5 as the transformer's input, dynamic shift (mu); schnell-like: true CFG against
    the empty prompt (FluxPipeline's true_cfg_scale with negative prompt ""), no shift. 4 euler steps."""
    model = build_tiny_random_flux(guidance_embeds=distilled)
    g = 3.5 if distilled else 2.0
    noise = model.make_noise(2, torch.Generator().manual_seed(0))
    # The noise is the pipeline's own draw (before packing) for the same generator.
    pipe_noise, _ = model.pipeline().prepare_latents(
        2, 4, 32, 32, torch.float32, "cpu", torch.Generator().manual_seed(0)
    )
    assert torch.equal(pipe_noise, FluxPipeline._pack_latents(noise, 2, 4, 8, 8))
    kw = {"guidance_scale": g} if distilled else {"true_cfg_scale": g, "negative_prompt": ["", ""]}
    theirs = pipeline_images(model, noise, 4, **kw)
    ours = draft_images(model, noise, euler(4, g))
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    assert ours.std() > 0.01  # images, not a constant
    # Reached: bitwise equal (same float32 operations in the same order); allowed 1e-6 relative.
    assert rel_err(ours, theirs) <= 1e-6


def test_distilled_model_has_no_unconditional_pass():
    model = build_tiny_random_flux()
    cond = model.encode_prompts(PROMPTS)
    assert model.guidance_distilled and cond.uncond is None and cond.pooled.shape == (2, 32)
    assert FluxModel.is_guidance_distilled("tiny-random-flux")
    x = model.make_noise(2, torch.Generator().manual_seed(0))
    t = euler().timesteps(model)[0]
    with torch.no_grad():  # guidance reaches the transformer: 1.0 and 3.5 differ
        assert (model.denoise(x, t, cond, 1.0) - model.denoise(x, t, cond, 3.5)).abs().max() > 1e-4


def test_save_pretrained_loads_in_flux_pipeline_and_back(tmp_path):
    from draft_core.models.loading import load_model

    model = build_tiny_random_flux()
    model.save_pretrained(tmp_path / "flux")
    assert FluxPipeline.from_pretrained(str(tmp_path / "flux")).transformer.config.guidance_embeds
    again = load_model(str(tmp_path / "flux"), device="cpu", dtype=torch.float32)
    assert isinstance(again, FluxModel) and again.sample_shape == model.sample_shape
    assert again.max_sequence_length == model.max_sequence_length
    assert FluxModel.is_guidance_distilled(str(tmp_path / "flux"))
    noise = model.make_noise(2, torch.Generator().manual_seed(0))
    assert torch.equal(draft_images(again, noise, euler(2)), draft_images(model, noise, euler(2)))


# -- gradients ------------------------------------------------------------------------------
@pytest.fixture
def rope_in_float64(monkeypatch):
    patch_flux_rope_float64(monkeypatch)


def test_full_draft_matches_central_differences_float64(rope_in_float64):
    from draft_estimators import FullBackprop

    model, params = flux_with_lora(torch.float64)
    sampler = euler(3)
    inputs = step_inputs(model, sampler, LinearReward((1, 3, 32, 32), torch.float64), PROMPTS[:1])
    grads, _ = grads_of(FullBackprop(checkpoint=True), inputs, params)

    def loss_at():
        with torch.no_grad():
            x0 = sampler.sample(model, inputs.cond, inputs.noise)
            return -inputs.reward(model.decode(x0), inputs.cond.prompts).mean().item()

    # float64 throughout: h = 1e-5 puts the O(h²) truncation and the rounding (~1e-16·L/h) far below 1e-6.
    assert_central_differences(loss_at, grads, params, directions=2, h=1e-5, rel=1e-6)


def test_draft_k_with_k_equal_t_is_full_draft(rope_in_float64):
    from draft_estimators import FullBackprop, TruncatedBackprop

    model, params = flux_with_lora(torch.float64)
    inputs = step_inputs(model, euler(3), LinearReward((1, 3, 32, 32), torch.float64), PROMPTS)
    full, _ = grads_of(FullBackprop(), inputs, params)
    k3, _ = grads_of(TruncatedBackprop(k=3), inputs, params)
    for a, b in zip(full, k3):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=0)


ESTIMATORS = {
    "draft": {},
    "draft-k": {"k": 1},
    "draft-k-range": {"k_range": [1, 2]},
    "draft-lv": {"n": 2},
    "refl": {"m": 2},
    "dpg": {"states": 1, "critic_rank": 2},
    "kl": {},
}


@pytest.fixture(scope="module")
def trained_flux():
    return flux_with_lora()


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_trains_a_step(trained_flux, name):
    from draft_core.testing.estimators import TinyNetworkReward
    from draft_estimators.kl import KLRegularized

    model, params = trained_flux
    registry = load_registry()
    base = name.removesuffix("-range")
    estimator = (
        KLRegularized(registry.build("estimator", "draft-k", k=1), 0.1)
        if name == "kl"
        else registry.build("estimator", base, **ESTIMATORS[name])
    )
    inputs = step_inputs(model, euler(3), TinyNetworkReward(), PROMPTS)
    probe = model.make_noise(1, torch.Generator().manual_seed(9))
    t, cond = euler().timesteps(model)[1], model.encode_prompts(["a probe"])
    with torch.no_grad():
        before = model.denoise(probe, t, cond, 3.5)
    grads, out = grads_of(estimator, inputs, params)
    flat = torch.cat([g.flatten() for g in grads])
    assert torch.isfinite(out.loss) and torch.isfinite(flat).all() and flat.abs().max() > 0
    assert all(p.grad is None for p in model.text_encoder_2.parameters())
    stray = [n for n, p in model.transformer.named_parameters() if "lora_" not in n and p.grad is not None]
    assert not stray
    with torch.no_grad():
        assert torch.equal(before, model.denoise(probe, t, cond, 3.5)), "the estimator left the model changed"


# -- LoRA files -----------------------------------------------------------------------------
def test_lora_saved_by_draft_loads_in_flux_pipeline(tmp_path):
    model, _ = flux_with_lora(alpha=3.0)
    noise = model.make_noise(2, torch.Generator().manual_seed(0))
    ours = draft_images(model, noise, euler(3))
    save_lora(model, tmp_path / "lora")
    fresh = build_tiny_random_flux()  # same seed, same base weights; diffusers' loader puts the LoRA on it
    assert rel_err(draft_images(fresh, noise, euler(3)), ours) > 1e-3  # the LoRA matters
    pipe = fresh.pipeline()
    pipe.load_lora_weights(str(tmp_path / "lora"))
    theirs = pipeline_images(fresh, noise, 3, pipe=pipe, guidance_scale=3.5)
    assert rel_err(ours, theirs) <= 1e-5  # float32 forward passes with the LoRA applied by peft in both


def test_lora_mix_and_fuse_on_flux(tmp_path, capsys):
    """lora mix (0.5 and 0.25 of one LoRA = 0.75 of it) and lora fuse (a FluxPipeline folder) keep the LoRA's output."""
    from draft_core.models.loading import load_model

    model, _ = flux_with_lora()
    save_lora(model, tmp_path / "a")
    assert (
        main(["lora", "mix", f"{tmp_path / 'a'}:0.5", f"{tmp_path / 'a'}:0.25", "--out", str(tmp_path / "mixed")]) == 0
    )
    assert (
        main(
            [
                "lora",
                "fuse",
                "--model",
                "tiny-random-flux",
                "--lora",
                str(tmp_path / "a"),
                "--out",
                str(tmp_path / "fused"),
            ]
        )
        == 0
    )
    x, t = model.make_noise(1, torch.Generator().manual_seed(0)), torch.tensor(500.0)
    cond = model.encode_prompts(["a cat"])

    def output(loaded, *specs):
        apply_loras(loaded, [LoraSpec.parse(s) for s in specs])
        with torch.no_grad():
            return loaded.denoise(x, t, cond, 3.5)

    fused = load_model(str(tmp_path / "fused"), device="cpu", dtype=torch.float32)
    assert isinstance(fused, FluxModel)
    # float32 sums in another order (W + ΔW folded; ranks concatenated): a few ulps of the output's scale.
    assert rel_err(output(fused), output(build_tiny_random_flux(), str(tmp_path / "a"))) <= 1e-5
    assert (
        rel_err(
            output(build_tiny_random_flux(), str(tmp_path / "mixed")),
            output(build_tiny_random_flux(), f"{tmp_path / 'a'}:0.75"),
        )
        <= 1e-5
    )


def _flux1_block_modules(rank: int, alpha: float, seed: int = 0) -> dict[str, LoraModule]:
    """A LoRA on every layer of one double and one single block at FLUX.1's widths (3072, MLP 12288),
    the widths diffusers' kohya reader assumes for single blocks' fused linear1."""
    from draft_core.lora.kohya_flux import DOUBLE, SINGLE

    g = torch.Generator().manual_seed(seed)
    width, mlp = 3072, 12288
    sizes = {
        "ff.net.0.proj": (width, mlp),
        "ff.net.2": (mlp, width),
        "ff_context.net.0.proj": (width, mlp),
        "ff_context.net.2": (mlp, width),
        "norm1.linear": (width, 6 * width),
        "norm1_context.linear": (width, 6 * width),
        "proj_mlp": (width, mlp),
        "proj_out": (width + mlp, width),
        "norm.linear": (width, 3 * width),
    }
    modules = {}
    for kind, table in (("transformer_blocks", DOUBLE), ("single_transformer_blocks", SINGLE)):
        for name in table:
            n_in, n_out = sizes.get(name, (width, width))
            modules[f"transformer.{kind}.0.{name}"] = LoraModule(
                torch.randn(rank, n_in, generator=g) * 0.1, torch.randn(n_out, rank, generator=g) * 0.1, alpha / rank
            )
    return modules


@pytest.mark.parametrize("alpha", [2.0, 3.0], ids=["alpha=rank-bitwise", "alpha=1.5rank"])
def test_kohya_flux_layout_reads_back_through_diffusers(tmp_path, alpha):
    """BFL names with q/k/v (and a single block's MLP input) fused: diffusers' own converter splits them back."""
    modules = _flux1_block_modules(rank=2, alpha=alpha)
    state = flux_kohya_state(modules)
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in state}
    assert names == {
        f"lora_unet_double_blocks_0_{n}"
        for n in (
            "img_attn_qkv",
            "img_attn_proj",
            "img_mlp_0",
            "img_mlp_2",
            "img_mod_lin",
            "txt_attn_qkv",
            "txt_attn_proj",
            "txt_mlp_0",
            "txt_mlp_2",
            "txt_mod_lin",
        )
    } | {f"lora_unet_single_blocks_0_{n}" for n in ("linear1", "linear2", "modulation_lin")}
    assert state["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (6, 3072)
    assert state["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape == (3 * 3072, 6)
    assert state["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (3 * 3072 + 12288, 8)
    assert float(state["lora_unet_single_blocks_0_linear1.alpha"]) == alpha / 2 * 8
    save_file(state, str(tmp_path / "kohya.safetensors"))
    back = FluxPipeline.lora_state_dict(str(tmp_path), weight_name="kohya.safetensors")
    # Every module comes back (the fused groups as their separate q, k, v and MLP-input layers).
    assert {k.rsplit(".lora_", 1)[0] for k in back} == set(modules)
    for name, m in modules.items():
        down, up = back[f"{name}.lora_A.weight"], back[f"{name}.lora_B.weight"]
        if alpha == 2.0:  # scale 1: the converter's scaling multiplies by 1.0, so the round trip is exact
            assert torch.equal(down, m.down) and torch.equal(up, m.up), name
        # ΔW (up to [18432, 3072]) applied to a probe: float32 products, one rounding of alpha/rank apart.
        probe = torch.randn(m.down.shape[1], 4, generator=torch.Generator().manual_seed(0))
        got, expected = up @ (down @ probe), m.scale * (m.up @ (m.down @ probe))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_kohya_export_cli_loads_in_flux_pipeline_like_the_lora(tmp_path, capsys):
    """On tiny-random-flux: the double blocks and single blocks' output layers (diffusers' reader fixes
    linear1's split at FLUX.1's widths, tested above). Loading the export gives the LoRA's output."""
    model = build_tiny_random_flux()
    targets = [
        "transformer_blocks.0." + t
        for t in (
            "attn.to_q",
            "attn.to_k",
            "attn.to_v",
            "attn.to_out.0",
            "attn.add_q_proj",
            "attn.add_k_proj",
            "attn.add_v_proj",
            "attn.to_add_out",
            "ff.net.0.proj",
            "ff.net.2",
            "ff_context.net.0.proj",
            "ff_context.net.2",
        )
    ]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        add_lora(model, rank=2, targets=targets + ["single_transformer_blocks.0.proj_out"], init=False)
    save_lora(model, tmp_path / "lora")
    out = tmp_path / "kohya" / "flux.safetensors"
    assert (
        main(["lora", "export", str(tmp_path / "lora"), "--format", "kohya", "--family", "flux", "--out", str(out)])
        == 0
    )
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in load_file(str(out))
    x = model.make_noise(2, torch.Generator().manual_seed(0))
    cond, t = model.encode_prompts(PROMPTS), euler().timesteps(model)[1]
    with torch.no_grad():
        expected = model.denoise(x, t, cond, 3.5)
        fresh = build_tiny_random_flux()
        fresh.pipeline().load_lora_weights(str(out.parent), weight_name=out.name)
        got = fresh.denoise(x, t, cond, 3.5)
        base = build_tiny_random_flux().denoise(x, t, cond, 3.5)
    assert rel_err(expected, base) > 1e-3
    assert rel_err(got, expected) <= 1e-5


# -- refusals ---------------------------------------------------------------------------------
def test_lora_of_another_family_is_refused_in_one_paragraph(tmp_path):
    from draft_core.models.loading import load_model

    for other in ("tiny-random", "tiny-random-sd3"):
        donor = load_model(other, device="cpu", dtype=torch.float32)
        add_lora(donor, rank=2, init=False)
        save_lora(donor, tmp_path / other)
        with pytest.raises(DraftError) as err:
            apply_loras(build_tiny_random_flux(), [LoraSpec(tmp_path / other)], model_name="tiny-random-flux")
        message = str(err.value)
        assert "\n" not in message and "tiny-random-flux" in message, message


def write_config(tmp_path: Path, **sections) -> Path:
    import yaml

    config = {
        "model": {"name": "tiny-random-flux"},
        "lora": {"rank": 2},
        "sampler": {"name": "euler", "steps": 3, "guidance_scale": 3.5},
        "estimator": {"name": "draft-k", "k": 1},
        "reward": {"name": "jpeg-compressibility"},
        "prompts": {"items": PROMPTS},
        "train": {
            "steps": 2,
            "batch_size": 2,
            "sample_every": 0,
            "checkpoint_every": 1000,
            "sample_per_prompt": 1,
            "sample_prompts": PROMPTS[:1],
        },
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    path = tmp_path / "flux.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "override, words",
    [
        ("learn.guidance=true", "guidance-distilled"),
        ("learn.negative_prompt=true", "guidance-distilled"),
        ("sampler.name=ddim", "flow"),
    ],
)
def test_bad_settings_exit_2_before_weights_load(tmp_path, capsys, monkeypatch, override, words):
    import draft_core.models.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the input error was reported")

    monkeypatch.setattr(loading, "load_model", refuse)
    monkeypatch.setattr(FluxModel, "__init__", refuse)
    code = main(["train", str(write_config(tmp_path)), "--out", str(tmp_path / "run"), "--set", override])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert words in err and "tiny-random-flux" in err


# -- the CLI end to end ---------------------------------------------------------------------------
def test_train_and_sample_via_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    # --model alone: the default config with the family's sampler (euler), shortened.
    fast = [
        "train.steps=2",
        "sampler.steps=2",
        "train.batch_size=2",
        "train.sample_every=0",
        "train.sample_per_prompt=1",
        "train.sample_prompts=[a cat]",
        "estimator.name=draft-k",
        "lora.rank=2",
    ]
    assert (
        main(
            [
                "train",
                "--model",
                "tiny-random-flux",
                "--out",
                str(run),
                "--no-progress",
                *sum((["--set", s] for s in fast), []),
            ]
        )
        == 0
    )
    from draft_core.config import load_config

    assert load_config(run / "config.yaml").sampler["name"] == "euler"
    lora = run / "lora" / "pytorch_lora_weights.safetensors"
    assert lora.exists() and all(k.startswith("transformer.") for k in load_file(str(lora)))
    out = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--model",
                "tiny-random-flux",
                "--guidance",
                "3.5",
                "--steps",
                "3",  # euler: the family's
                "--prompt",
                "a cat",
                "--n",
                "2",
                "--lora",
                str(run),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "grid.png").exists() and (out / "0001.png").exists()
    from PIL import Image

    with Image.open(out / "0000.png") as img:
        assert img.size == (32, 32) and "Steps: 3, Sampler: euler, CFG scale: 3.5" in img.text["parameters"]
    kohya = tmp_path / "flux-kohya.safetensors"  # the family comes from the run's config.yaml
    assert main(["lora", "export", str(run), "--format", "kohya", "--out", str(kohya)]) == 0
    assert "lora_unet_single_blocks_0_linear2.lora_up.weight" in load_file(str(kohya))


def test_shipped_flux_config_validates():
    from draft_core.config import load_config
    from draft_core.training.components import build_components
    from draft_core.training.preflight import check_family

    config = load_config(ROOT / "configs" / "flux-hpsv2.yaml")
    assert config.model.name == "black-forest-labs/FLUX.1-dev" and config.model.dtype == "bfloat16"
    assert config.sampler == {"name": "euler", "steps": 28, "guidance_scale": 3.5}
    assert config.reward["name"] == "hpsv2" and config.train.checkpoint_decode is True
    components = build_components(config)
    check_family(config, components, FluxModel)  # euler on a flow family, no learned guidance on a distilled one
