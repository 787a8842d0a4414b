"""LoRA: targets and dtypes, the diffusers file format, mixing at sampling time, spec parsing."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention import BasicTransformerBlock
from safetensors.torch import load_file

from draft_core.errors import DraftError
from draft_core.lora import (
    WEIGHT_NAME,
    LoraSpec,
    adapters_enabled,
    add_lora,
    apply_loras,
    load_lora_state,
    lora_parameters,
    lora_state,
    save_lora,
)
from draft_core.models.tiny import build_tiny_random
from draft_core.samplers.ddim import DDIMSampler

PROMPTS = ["a cat", "a dog"]
# The paper's set (Appendix A.1): cross-attention and feed-forward; "attention+ff" adds self-attention.
PAPER_TARGETS = [
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ff.net.0.proj", "ff.net.2",
]  # fmt: skip
BLOCK_TARGETS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", *PAPER_TARGETS]


@pytest.fixture(scope="module")
def base_unet():
    """tiny-random's UNet without adapters; tests deep-copy it before changing it."""
    return build_tiny_random().unet


def with_random_lora(unet, seed: int, rank: int = 2, alpha: float | None = None):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        add_lora(unet, rank=rank, alpha=alpha, init=False)
    return unet


def unet_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=g).to(dtype)
    context = torch.randn(2, 77, 32, generator=g).to(dtype)
    return sample, torch.tensor(500), context


@torch.no_grad()
def unet_output(unet, dtype=torch.float32):
    sample, t, context = unet_inputs(dtype)
    return unet(sample, t, encoder_hidden_states=context).sample


def lora_wrapped_modules(unet) -> set[str]:
    return {n.rsplit(".lora_A", 1)[0] for n, _ in unet.named_parameters() if ".lora_A." in n}


# -- add_lora -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "targets, expected",
    [(None, PAPER_TARGETS), ("cross-attention+ff", PAPER_TARGETS), ("attention+ff", BLOCK_TARGETS)],
    ids=["default", "paper-by-name", "wide"],
)
def test_targets_every_transformer_blocks_cross_attention_and_feed_forward(base_unet, targets, expected):
    """By default (paper A.1) the cross-attention (attn2) and feed-forward layers of every
    transformer block, not the self-attention (attn1); "attention+ff" adds attn1."""
    unet = copy.deepcopy(base_unet)
    params = add_lora(unet, rank=4) if targets is None else add_lora(unet, rank=4, targets=targets)
    blocks = [name for name, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]
    assert len(blocks) == 4  # down 0, mid, up 1 (two layers)
    assert lora_wrapped_modules(unet) == {f"{b}.{t}" for b in blocks for t in expected}
    assert len(params) == 2 * len(blocks) * len(expected)
    assert {id(p) for p in params} == {id(p) for p in lora_parameters(unet)}
    assert all(p.requires_grad for p in params)
    lora_ids = {id(p) for p in params}
    assert not any(p.requires_grad for p in unet.parameters() if id(p) not in lora_ids)


def test_default_init_leaves_the_output_unchanged(base_unet):
    unet = copy.deepcopy(base_unet)
    before = unet_output(unet)
    add_lora(unet)
    assert torch.equal(unet_output(unet), before)
    assert not torch.equal(unet_output(with_random_lora(copy.deepcopy(base_unet), seed=1)), before)


def test_lora_parameters_are_float32_on_a_bfloat16_unet(base_unet):
    unet = copy.deepcopy(base_unet).to(torch.bfloat16)
    params = add_lora(unet, rank=2)
    assert {p.dtype for p in params} == {torch.float32}
    lora_ids = {id(p) for p in params}
    base = [p for p in unet.parameters() if id(p) not in lora_ids]
    assert {p.dtype for p in base} == {torch.bfloat16}
    assert not any(p.requires_grad for p in base)
    out = unet_output(unet, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs", [{"targets": ["no_such_layer"]}, {"targets": "no_such_layer"}, {"rank": 0}])
def test_bad_lora_arguments(base_unet, kwargs):
    with pytest.raises(DraftError, match="no_such_layer" if "targets" in kwargs else "rank"):
        add_lora(copy.deepcopy(base_unet), **kwargs)


# -- the diffusers file format ------------------------------------------------------------
def test_saved_lora_loads_into_a_vanilla_diffusers_pipeline(tmp_path):
    model = build_tiny_random()
    model_dir = model.save_pretrained(tmp_path / "model")
    with_random_lora(model.unet, seed=3)
    weights = save_lora(model.unet, tmp_path / "lora")
    assert weights == tmp_path / "lora" / WEIGHT_NAME
    assert all(key.startswith("unet.") for key in load_file(weights))

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def pipeline_images():
        return pipe(
            PROMPTS,
            num_inference_steps=3,
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(4),
            output_type="pt",
            height=64,
            width=64,
        ).images

    without_lora = pipeline_images()
    pipe.load_lora_weights(tmp_path / "lora")
    with_lora = pipeline_images()
    with torch.no_grad():
        x = DDIMSampler(3, 7.5).sample(
            model, model.encode_prompts(PROMPTS), model.make_noise(2, torch.Generator().manual_seed(4))
        )
        ours = model.decode(x)
    torch.testing.assert_close(ours, with_lora, rtol=1e-5, atol=1e-5)
    assert (with_lora - without_lora).abs().max() > 1e-3


# -- mixing at sampling time ---------------------------------------------------------------
@pytest.fixture(scope="module")
def two_loras(base_unet, tmp_path_factory):
    """Two saved LoRAs of different rank and alpha/rank, with their peft states."""
    root = tmp_path_factory.mktemp("loras")
    loras = []
    for i, (rank, alpha) in enumerate([(2, 4.0), (4, None)]):
        unet = with_random_lora(copy.deepcopy(base_unet), seed=10 + i, rank=rank, alpha=alpha)
        save_lora(unet, root / f"lora{i}")
        loras.append((root / f"lora{i}", lora_state(unet), (alpha or rank) / rank))
    return loras


def merged_unet(base_unet, loras, scales):
    """W = W0 + Σ scale_i · (alpha_i / r_i) · B_i A_i, written into a plain copy."""
    unet = copy.deepcopy(base_unet)
    weights = unet.state_dict()
    for (_, state, alpha_over_rank), scale in zip(loras, scales):
        for key, a in state.items():
            if ".lora_A." not in key:
                continue
            b = state[key.replace(".lora_A.", ".lora_B.")]
            target = key.replace(".lora_A.weight", ".weight")
            weights[target] += scale * alpha_over_rank * (b @ a)
    unet.load_state_dict(weights)
    return unet


def spec_path(folder, form: str):
    return folder / WEIGHT_NAME if form == "file" else folder


@pytest.mark.parametrize(
    "form",
    ["file", "folder"],
)
def test_apply_loras_mixes_scaled_weight_deltas(base_unet, two_loras, form):
    specs = [LoraSpec(spec_path(two_loras[0][0], form), 0.75), LoraSpec(spec_path(two_loras[1][0], form), 0.5)]
    unet = copy.deepcopy(base_unet)
    names = apply_loras(unet, specs)
    assert len(names) == 2
    expected = unet_output(merged_unet(base_unet, two_loras, [0.75, 0.5]))
    assert (expected - unet_output(base_unet)).abs().max() > 1e-3
    torch.testing.assert_close(unet_output(unet), expected, rtol=1e-4, atol=1e-5)


def test_apply_lora_at_scale_zero_is_the_base_model(base_unet, two_loras):
    unet = copy.deepcopy(base_unet)
    apply_loras(unet, [LoraSpec(spec_path(two_loras[0][0], "file"), 0.0)])
    # Exact on any CPU: each adapted layer adds its delta times 0.0, i.e. exactly zero, to the same base output.
    assert torch.equal(unet_output(unet), unet_output(base_unet))


def test_apply_no_loras_is_a_no_op(base_unet):
    unet = copy.deepcopy(base_unet)
    assert apply_loras(unet, []) == []
    assert torch.equal(unet_output(unet), unet_output(base_unet))


# -- LoraSpec.parse --------------------------------------------------------------------------
@pytest.fixture
def lora_dir(tmp_path):
    folder = tmp_path / "run" / "lora"
    folder.mkdir(parents=True)
    (folder / WEIGHT_NAME).write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    "suffix, scale", [("", 1.0), (":0.75", 0.75), (":2", 2.0), (":-0.5", -0.5), (":1e-1", 0.1), (":.5", 0.5)]
)
def test_spec_scale(lora_dir, suffix, scale):
    spec = LoraSpec.parse(f"{lora_dir}{suffix}")
    assert spec.path == lora_dir
    assert spec.scale == pytest.approx(scale)


def test_spec_run_folder_means_its_lora_folder(lora_dir):
    assert LoraSpec.parse(f"{lora_dir.parent}:0.5") == LoraSpec(lora_dir, 0.5)


def test_spec_file(lora_dir):
    assert LoraSpec.parse(str(lora_dir / WEIGHT_NAME)).path == lora_dir / WEIGHT_NAME


@pytest.mark.parametrize("text", ["missing", "missing:0.5"])
def test_spec_missing_path(tmp_path, text):
    with pytest.raises(DraftError, match="missing") as info:
        LoraSpec.parse(str(tmp_path / text))
    assert str(tmp_path / "missing") in str(info.value)


# -- adapters_enabled ------------------------------------------------------------------------
def test_adapters_enabled_switches_off_inside_and_back_after(base_unet):
    base = unet_output(base_unet)
    unet = with_random_lora(copy.deepcopy(base_unet), seed=5)
    on = unet_output(unet)
    assert not torch.allclose(on, base)
    with adapters_enabled(unet, False):
        assert torch.equal(unet_output(unet), base)
    assert torch.equal(unet_output(unet), on)
    with pytest.raises(RuntimeError, match="inside"):
        with adapters_enabled(unet, False):
            raise RuntimeError("inside")
    assert torch.equal(unet_output(unet), on)
    with adapters_enabled(unet, True):
        assert torch.equal(unet_output(unet), on)
    with adapters_enabled(base_unet, False):  # no adapters: nothing to switch
        assert torch.equal(unet_output(base_unet), base)


# -- checkpoint state ----------------------------------------------------------------------
def test_lora_state_round_trip(base_unet):
    source = with_random_lora(copy.deepcopy(base_unet), seed=6)
    target = with_random_lora(copy.deepcopy(base_unet), seed=7)
    state = lora_state(source)
    assert not torch.equal(unet_output(source), unet_output(target))
    load_lora_state(target, state)
    loaded = lora_state(target)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert torch.equal(unet_output(target), unet_output(source))
    state[next(iter(state))].add_(1.0)  # a copy: changing it leaves the model alone
    assert torch.equal(unet_output(target), unet_output(source))


def test_load_lora_state_rejects_foreign_keys(base_unet):
    unet = with_random_lora(copy.deepcopy(base_unet), seed=8)
    state = lora_state(unet)
    state["not.a.layer.lora_A.weight"] = torch.zeros(2, 2)
    with pytest.raises(DraftError, match="not.a.layer"):
        load_lora_state(unet, state)
