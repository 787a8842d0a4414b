"""The sdxl family on tiny-random-sdxl: parity with diffusers' StableDiffusionXLPipeline, DRaFT's gradient
against float64 central differences, every DRaFT-style estimator, LoRA files (diffusers, kohya, mix, fuse)
read by diffusers' own loaders, bad input, and the CLI end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from model_fixtures import LinearReward, assert_central_differences, grads_of, step_inputs
from safetensors.torch import load_file

from draft_core.cli import main
from draft_core.errors import DraftError
from draft_core.lora import LoraSpec, add_lora, apply_loras, save_lora
from draft_core.lora.card import write_model_card
from draft_core.lora.files import read_lora
from draft_core.models.families.sdxl import SDXLModel, build_tiny_random_sdxl
from draft_core.models.loading import check_model, load_model
from draft_core.samplers.ddim import DDIMSampler
from draft_core.testing.estimators import EstimatorConformance, TinyNetworkReward
from draft_estimators import (
    DeterministicPolicyGradient,
    FullBackprop,
    KLRegularized,
    LowVariance,
    ReFL,
    TruncatedBackprop,
)

PROMPTS = ["a cat", "a dog on a hill"]


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| relative to max |b|."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def with_random_lora(model: SDXLModel, seed: int = 1, rank: int = 2, alpha: float | None = None) -> list:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return add_lora(model, rank=rank, alpha=alpha, init=False)


def draft_sample(model, noise, steps=3, guidance=5.0, prompts=PROMPTS):
    with torch.no_grad():
        return DDIMSampler(steps=steps, guidance_scale=guidance).sample(model, model.encode_prompts(prompts), noise)


def pipeline_sample(pipe, noise, steps=3, guidance=5.0, prompts=PROMPTS, output_type="latent"):
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompts, latents=noise.clone(), num_inference_steps=steps, guidance_scale=guidance, output_type=output_type
    ).images


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_random_sdxl()


# -- parity with StableDiffusionXLPipeline ------------------------------------------------------
@pytest.mark.parametrize("force_zeros", [True, False])
def test_encode_prompts_is_the_pipelines_encode_prompt(force_zeros):
    model = build_tiny_random_sdxl(force_zeros_for_empty_prompt=force_zeros)
    cond = model.encode_prompts(PROMPTS)
    pe, npe, pooled, npooled = model.pipeline().encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True)
    assert cond.cond.shape == (2, 77, 64) and cond.pooled.shape == (2, 32) and cond.uncond.shape == (1, 77, 64)
    assert torch.equal(cond.cond, pe) and torch.equal(cond.pooled, pooled)
    # The pipeline encodes "" once per prompt (a batch of 2), draft once: float32 matmuls of another
    # batch size may round differently, so a few ulps of the embeddings' scale.
    for ours, theirs in ((cond.uncond, npe), (cond.uncond_pooled, npooled)):
        assert theirs.abs().max() == 0 if force_zeros else rel_error(ours.expand_as(theirs), theirs) <= 1e-6
        assert torch.equal(ours.expand_as(theirs), theirs) if force_zeros else ours.abs().max() > 0
    # Size conditioning: original (16, 16), crop (0, 0), target (16, 16), as the pipeline builds it.
    ids = model.pipeline()._get_add_time_ids((16, 16), (0, 0), (16, 16), torch.float32, 32)
    assert torch.equal(model.time_ids(model.make_noise(1)), ids)


def test_sampling_matches_the_diffusers_pipeline(tiny):
    """DDIM, CFG 5, 4 steps, the same initial latents: latents and decoded images as the pipeline's.
    Reached: bit-identical (relative error 0.0); required: 1e-5 relative (float32)."""
    noise = tiny.make_noise(2, torch.Generator().manual_seed(0))
    latents = draft_sample(tiny, noise, steps=4)
    with torch.no_grad():
        images = tiny.decode(latents)
    final = []
    pipe = tiny.pipeline()
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        PROMPTS,
        latents=noise.clone(),
        num_inference_steps=4,
        guidance_scale=5.0,
        output_type="pt",
        callback_on_step_end=lambda p, i, t, kw: final.append(kw["latents"]) or {},
    ).images
    assert rel_error(latents, final[-1]) <= 1e-5
    assert rel_error(images, theirs) <= 1e-5
    assert rel_error(latents, noise) > 0.1  # the chain did something


# -- gradients ------------------------------------------------------------------------------------
def test_full_draft_matches_central_differences_and_draft_k_with_k_t_equals_it():
    model = build_tiny_random_sdxl().to(dtype=torch.float64)
    params = with_random_lora(model)
    for p in params:
        p.data = p.data.to(torch.float64)
    sampler = DDIMSampler(steps=3, guidance_scale=5.0)
    reward = LinearReward((1, 3, 16, 16), torch.float64)
    inputs = step_inputs(model, sampler, reward, ["a cat"])
    grads, _ = grads_of(FullBackprop(), inputs, params)

    def loss_at():
        with torch.no_grad():
            x0 = sampler.sample(model, inputs.cond, inputs.noise)
            return -reward(model.decode(x0), inputs.cond.prompts).mean().item()

    assert_central_differences(loss_at, grads, params, directions=2)
    grads_k, _ = grads_of(TruncatedBackprop(k=3), inputs, params)
    flat, flat_k = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in grads_k])
    # The same float64 computation (checkpointed or not): equal to rounding.
    torch.testing.assert_close(flat_k, flat, rtol=1e-10, atol=1e-10 * flat.abs().max().item())


ESTIMATORS = {
    "draft": lambda: FullBackprop(),
    "draft-k": lambda: TruncatedBackprop(k=1),
    "draft-k-range": lambda: TruncatedBackprop(k_range=[1, 2]),
    "draft-lv": lambda: LowVariance(n=2),
    "refl": lambda: ReFL(m=2),
    "dpg": lambda: DeterministicPolicyGradient(states=2, critic_rank=2),
    "kl": lambda: KLRegularized(LowVariance(n=1), 0.5),
}


@pytest.fixture(scope="module")
def tiny_lora():
    model = build_tiny_random_sdxl()
    return model, with_random_lora(model)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_draft_estimator_trains_a_step_on_sdxl(tiny_lora, name):
    model, params = tiny_lora
    probe = model.make_noise(1, torch.Generator().manual_seed(5))
    probe_cond = model.encode_prompts(["a probe"])
    with torch.no_grad():
        before = model.denoise(probe, torch.tensor(10), probe_cond, 3.0)
    inputs = step_inputs(model, DDIMSampler(steps=3, guidance_scale=3.0), TinyNetworkReward(), PROMPTS)
    grads, out = grads_of(ESTIMATORS[name](), inputs, params)
    flat = torch.cat([g.flatten() for g in grads])
    assert torch.isfinite(out.loss) and torch.isfinite(flat).all() and flat.abs().max() > 0
    lora = {id(p) for p in params}
    for module in model.modules():
        stray = [n for n, p in module.named_parameters() if id(p) not in lora and p.grad is not None]
        assert not stray, f"frozen weights got gradients: {stray[:3]}"
    with torch.no_grad():
        assert torch.equal(model.denoise(probe, torch.tensor(10), probe_cond, 3.0), before)


def test_learned_sampling_fits_the_sdxl_conditioning(tiny):
    """The learned negative prompt is as wide as SDXL's concatenated embeddings (not text_encoder's alone)."""
    from draft_core.config.schema import LearnSection
    from draft_core.training.learned_sampling import LearnedSampling

    sampler = DDIMSampler(steps=2, guidance_scale=5.0)
    learned = LearnedSampling.from_config(LearnSection(guidance=True, negative_prompt=True), tiny, sampler)
    cond = learned.condition(tiny.encode_prompts(PROMPTS))
    assert cond.uncond.shape == cond.cond.shape == (2, 77, 64) and cond.uncond_pooled.shape == (1, 32)
    learned.attach(sampler)
    x0 = sampler.sample(tiny, cond, tiny.make_noise(2, torch.Generator().manual_seed(0)), grad_from=0)
    (-x0.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in learned.parameters())


class TestLowVarianceConformsOnSDXL(EstimatorConformance):
    """The shared estimator checklist, run on the sdxl family instead of tiny-random."""

    @pytest.fixture(scope="class")
    @classmethod
    def setup(cls):
        model = build_tiny_random_sdxl()
        return model, with_random_lora(model)

    def make_estimator(self):
        return LowVariance(n=1)


# -- LoRA files -------------------------------------------------------------------------------------
def test_lora_saved_by_draft_loads_in_the_vanilla_pipeline(tiny_lora, tmp_path):
    """save_lora -> StableDiffusionXLPipeline.from_pretrained(save_pretrained folder).load_lora_weights:
    the same samples as draft's with the LoRA."""
    model, _ = tiny_lora
    save_lora(model, tmp_path / "lora")
    build_tiny_random_sdxl().save_pretrained(tmp_path / "base")
    assert check_model(str(tmp_path / "base")) is SDXLModel
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "base")
    pipe.load_lora_weights(str(tmp_path / "lora"))
    noise = model.make_noise(2, torch.Generator().manual_seed(2))
    ours = draft_sample(model, noise)
    assert rel_error(pipeline_sample(pipe, noise), ours) <= 1e-5
    reloaded = load_model(str(tmp_path / "base"), device="cpu")  # draft's from_pretrained, and --lora
    apply_loras(reloaded, [LoraSpec(tmp_path / "lora")])
    assert rel_error(draft_sample(reloaded, noise), ours) <= 1e-5
    assert rel_error(draft_sample(build_tiny_random_sdxl(), noise), ours) > 1e-3  # the LoRA matters


def _lora_with_text_encoders(folder: Path, seed: int) -> Path:
    """A LoRA file of the UNet and both text encoders (q/v projections), different alpha/r per component."""
    model = build_tiny_random_sdxl()
    with_random_lora(model, seed=seed, rank=2, alpha=3)
    from peft.utils import get_peft_model_state_dict

    from draft_core.lora.adapters import lora_config_dict

    g = torch.Generator().manual_seed(seed)
    layers = {
        "unet_lora_layers": get_peft_model_state_dict(model.unet),
        "unet_lora_adapter_metadata": lora_config_dict(model.unet),
    }
    for name, alpha in (("text_encoder", 1), ("text_encoder_2", 4)):
        state = {}
        for path, mod in getattr(model, name).named_modules():
            if path.endswith(("q_proj", "v_proj")):
                state[f"{path}.lora_A.weight"] = torch.randn(2, mod.in_features, generator=g)
                state[f"{path}.lora_B.weight"] = torch.randn(mod.out_features, 2, generator=g)
        layers[f"{name}_lora_layers"] = state
        layers[f"{name}_lora_adapter_metadata"] = {"r": 2, "lora_alpha": alpha, "target_modules": ["q_proj", "v_proj"]}
    StableDiffusionXLPipeline.save_lora_weights(folder, safe_serialization=True, **layers)
    write_model_card(folder, {"base_model": "tiny-random-sdxl"})
    return folder


_TO = {
    "unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    "text": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}


def _draft_module(key: str) -> str:
    """A key of diffusers' kohya conversion -> draft's module name (``component.path``)."""
    path = key.rsplit(".", 2)[0].replace(".processor.", ".")  # drop '.down.weight' / '.up.weight'
    m = re.fullmatch(r"(.+)\.(to_q|to_k|to_v|to_out)_lora", path)
    if m:
        path = f"{m[1]}.{_TO['text' if path.startswith('text') else 'unet'][m[2]]}"
    # transformers 5's CLIPTextModel has no text_model root (CLIPTextModelWithProjection keeps it).
    return path.removesuffix(".lora").replace("text_encoder.text_model.", "text_encoder.")


def test_kohya_export_names_and_diffusers_reads_it_back(tmp_path):
    lora = read_lora(_lora_with_text_encoders(tmp_path / "lora", seed=3))
    out = tmp_path / "kohya.safetensors"
    assert main(["lora", "export", str(tmp_path / "lora"), "--format", "kohya", "--out", str(out)]) == 0
    prefixes = {k.split("_")[0] + "_" + k.split("_")[1] for k in load_file(out)}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}  # the family from the model card: sdxl
    state, alphas = StableDiffusionXLPipeline.lora_state_dict(str(tmp_path), weight_name=out.name)
    downs = {k: v for k, v in state.items() if k.endswith("down.weight")}
    assert {_draft_module(k) for k in downs} == set(lora.modules)
    for key, down in downs.items():
        m = lora.modules[_draft_module(key)]
        up = state[key.replace("down.weight", "up.weight")]
        alpha = alphas[(key.split(".lora.")[0] if ".lora." in key else key) + ".alpha"]
        assert torch.equal(down, m.down) and torch.equal(up, m.up)
        assert alpha / m.rank == pytest.approx(m.scale, rel=1e-7)  # kohya's alpha/r is peft's scale
    assert len({m.scale for m in lora.modules.values()}) == 3  # 1.5 (UNet), 0.5 and 2 (the text encoders)
    sd = tmp_path / "as-sd.safetensors"
    assert main(["lora", "export", str(tmp_path / "lora"), "--out", str(sd), "--family", "sd"]) == 0
    assert any(k.startswith("lora_te_text_model_") for k in load_file(sd))  # SD's single text encoder name


def test_lora_mix_and_fuse_on_sdxl(tiny, tmp_path):
    a, b = (_lora_with_text_encoders(tmp_path / n, seed=s) for n, s in (("a", 4), ("b", 5)))
    assert main(["lora", "mix", f"{a}:0.5", f"{b}:-1.5", "--out", str(tmp_path / "mix")]) == 0
    mixed = read_lora(tmp_path / "mix")
    assert {n.split(".")[0] for n in mixed.modules} == {"unet", "text_encoder", "text_encoder_2"}
    noise = tiny.make_noise(1, torch.Generator().manual_seed(1))
    t, cond = torch.tensor(500), tiny.encode_prompts(["a cat"])

    def denoised(specs, model=None):
        model = model or build_tiny_random_sdxl()
        apply_loras(model, specs)
        with torch.no_grad():
            return model.denoise(noise, t, cond, 5.0)

    expected = denoised([LoraSpec(a, 0.5), LoraSpec(b, -1.5)])
    # A rank-concatenated mix: the same ΔW, float32 sums in another order (a few ulps of the output).
    assert rel_error(denoised([LoraSpec(tmp_path / "mix")]), expected) <= 1e-5
    pipe = build_tiny_random_sdxl().pipeline()
    pipe.load_lora_weights(str(tmp_path / "mix"))  # the vanilla loader reads all three components
    assert getattr(pipe.text_encoder_2, "peft_config", None)

    assert (
        main(["lora", "fuse", "--model", "tiny-random-sdxl", "--lora", f"{a}:0.5", "--out", str(tmp_path / "fused")])
        == 0
    )
    fused_model = load_model(str(tmp_path / "fused"), device="cpu")  # an SDXL folder (model_index.json), no adapters
    assert isinstance(fused_model, SDXLModel) and not getattr(fused_model.unet, "peft_config", None)
    with torch.no_grad():
        got = fused_model.denoise(noise, t, cond, 5.0)
    # W + ΔW in the weights instead of W x + ΔW x: float32 rounding of the sums.
    assert rel_error(got, denoised([LoraSpec(a, 0.5)])) <= 1e-5
    assert rel_error(got, denoised([])) > 1e-3


# -- bad input ------------------------------------------------------------------------------------
def _sd_lora(folder: Path) -> Path:
    from draft_core.models.tiny import build_tiny_random

    sd = build_tiny_random()
    add_lora(sd, rank=2, init=False)
    save_lora(sd, folder)
    write_model_card(folder, {"base_model": "tiny-random"})
    return folder


def test_a_lora_of_the_other_family_is_refused_naming_both(tiny_lora, tmp_path):
    with pytest.raises(DraftError) as sd_on_xl:
        apply_loras(build_tiny_random_sdxl(), [LoraSpec(_sd_lora(tmp_path / "sd"))], model_name="tiny-random-sdxl")
    model, _ = tiny_lora
    save_lora(model, tmp_path / "xl")
    write_model_card(tmp_path / "xl", {"base_model": "tiny-random-sdxl"})
    from draft_core.models.tiny import build_tiny_random

    with pytest.raises(DraftError) as xl_on_sd:
        apply_loras(build_tiny_random(), [LoraSpec(tmp_path / "xl")], model_name="tiny-random")
    for err, trained, given in (
        (sd_on_xl, "tiny-random", "tiny-random-sdxl"),
        (xl_on_sd, "tiny-random-sdxl", "tiny-random"),
    ):
        message = str(err.value)
        assert "\n" not in message and "Traceback" not in message
        assert f"trained on '{trained}'" in message and f"the model '{given}'" in message


def test_a_flow_sampler_is_refused_before_the_model_loads(monkeypatch, capsys, tmp_path):
    import draft_core.models
    import draft_core.models.loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input error was reported")

    for target, name in (
        (draft_core.models.loading, "load_model"),
        (draft_core.models, "load_model"),
        (SDXLModel, "__init__"),
    ):
        monkeypatch.setattr(target, name, refuse)
    code = main(["train", "--model", "tiny-random-sdxl", "--set", "sampler.name=euler", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "euler" in err
    assert not (tmp_path / "run").exists()

    # The family check itself (preflight), with a flow-matching sampler however it is registered.
    from draft_core.config import load_config
    from draft_core.training.components import build_components
    from draft_core.training.preflight import check_family

    config = load_config(overrides=["model.name=tiny-random-sdxl"])
    components = build_components(config)
    monkeypatch.setattr(components.sampler, "flow_matching", True, raising=False)
    with pytest.raises(DraftError, match=r"'sdxl' family.*use a diffusion sampler \(ddim, ddpm\)") as err:
        check_family(config, components, check_model("tiny-random-sdxl"))
    assert "\n" not in str(err.value)


# -- CLI and the shipped config ---------------------------------------------------------------------
def test_train_and_sample_on_tiny_random_sdxl_from_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    sets = [
        "train.steps=2",
        "sampler.steps=2",
        "train.batch_size=1",
        "train.sample_every=0",
        "train.sample_per_prompt=1",
        "train.sample_prompts=[a cat]",
        "estimator.name=draft-k",
        "estimator.k=1",
        "lora.rank=2",
    ]
    code = main(
        [
            "train",
            "--model",
            "tiny-random-sdxl",
            "--out",
            str(run),
            "--no-progress",
            *sum((["--set", s] for s in sets), []),
        ]
    )
    assert code == 0, capsys.readouterr().err
    lora = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    assert lora and all(k.startswith("unet.") for k in lora)
    out = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--model",
                "tiny-random-sdxl",
                "--lora",
                str(run),
                "--prompt",
                "a cat",
                "--n",
                "1",
                "--steps",
                "2",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "0000.png").exists()


def test_the_shipped_sdxl_config_validates():
    from draft_core.config import load_config
    from draft_core.training.components import build_components

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "sdxl-hpsv2.yaml")
    assert config.model.name == "stabilityai/stable-diffusion-xl-base-1.0"
    assert config.reward["name"] == "hpsv2" and config.estimator["name"] in ("draft-lv", "draft-k")
    assert config.model.dtype == "bfloat16" and config.train.checkpoint_decode is True
    build_components(config)
