"""LoRA sharing: exact mixes, the kohya layout and its round trip through diffusers, fused pipelines, model cards."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
from safetensors import safe_open
from safetensors.torch import load_file

from draft_core.cli import main
from draft_core.errors import DraftError
from draft_core.lora import WEIGHT_NAME, LoraSpec, add_lora, apply_loras, save_lora
from draft_core.lora.card import run_card_info, write_model_card
from draft_core.lora.files import kohya_name, mix_loras, read_lora, save_mixed, to_kohya
from draft_core.models.loading import load_model
from draft_core.models.pipeline import DiffusionModel
from draft_core.models.tiny import build_tiny_random
from draft_core.samplers.ddim import DDIMSampler


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_random()


def _save_random_lora(tiny, folder, seed, rank, alpha):
    unet = copy.deepcopy(tiny.unet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        add_lora(unet, rank=rank, alpha=alpha, init=False)
    return save_lora(unet, folder).parent


@pytest.fixture(scope="module")
def two_loras(tiny, tmp_path_factory):
    """Different ranks and alpha/r scales (1.5 and 1/3), so the mix must handle per-LoRA scaling."""
    root = tmp_path_factory.mktemp("loras")
    return _save_random_lora(tiny, root / "a", 1, rank=2, alpha=3), _save_random_lora(
        tiny, root / "b", 2, rank=3, alpha=1
    )


def pipeline_of(tiny) -> StableDiffusionPipeline:
    from diffusers import DDIMScheduler

    return StableDiffusionPipeline(
        vae=tiny.vae,
        text_encoder=tiny.text_encoder,
        tokenizer=tiny.tokenizer,
        unet=copy.deepcopy(tiny.unet),
        scheduler=DDIMScheduler.from_config(tiny.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def unet_output(unet):
    g = torch.Generator().manual_seed(0)
    sample, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    return unet(sample, torch.tensor(500), encoder_hidden_states=context).sample


def output_with(tiny, specs):
    unet = copy.deepcopy(tiny.unet)
    apply_loras(unet, specs)
    return unet_output(unet)


def output_loaded_by_diffusers(tiny, path, weight_name=WEIGHT_NAME):
    pipe = pipeline_of(tiny)
    pipe.load_lora_weights(str(path), weight_name=weight_name)
    return unet_output(pipe.unet)


# -- mix ----------------------------------------------------------------------------------------
def test_mix_with_weights_one_and_zero_is_the_first_lora_exactly(tiny, two_loras, tmp_path):
    a, b = two_loras
    path = save_mixed([LoraSpec(a, 1.0), LoraSpec(b, 0.0)], tmp_path / "mix")
    assert torch.equal(output_loaded_by_diffusers(tiny, path.parent), output_with(tiny, [LoraSpec(a, 1.0)]))
    original, mixed = load_file(a / WEIGHT_NAME), load_file(path)
    assert original.keys() == mixed.keys() and all(torch.equal(original[k], mixed[k]) for k in original)


def test_mix_equals_mixing_adapters_at_sampling_time(tiny, two_loras, tmp_path):
    a, b = two_loras
    specs = [LoraSpec(a, 0.5), LoraSpec(b, 0.75)]
    path = save_mixed(specs, tmp_path / "mix")
    assert next(iter(read_lora(path).modules.values())).rank == 2 + 3  # ranks concatenated
    expected, base = output_with(tiny, specs), unet_output(tiny.unet)
    got = output_loaded_by_diffusers(tiny, path.parent)  # diffusers' own loader reads the mix
    assert (expected - base).abs().max() > 1e-3  # the LoRAs matter
    # Two float32 forward passes that sum the same deltas in another order: they agree to rounding,
    # i.e. to a few float32 ulps of the outputs' scale (1e-6 absolute failed on another CPU), while
    # a wrong mix is off by the LoRAs' effect, above 1e-3.
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)


def test_mixed_delta_is_the_weighted_sum_of_deltas(two_loras):
    a, b = two_loras
    state, scale, rank = mix_loras([LoraSpec(a, 0.5), LoraSpec(b, -2.0)])
    la, lb = read_lora(a), read_lora(b)
    name = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
    delta = state[f"{name}.lora_B.weight"] @ state[f"{name}.lora_A.weight"] * scale
    ma, mb = la.modules[name], lb.modules[name]
    expected = 0.5 * ma.scale * ma.up @ ma.down - 2.0 * mb.scale * mb.up @ mb.down
    # Rank-5 float32 products summed in another order: a few ulps of the deltas' scale (1.5e-8 of 0.2
    # measured; a fixed 1e-7 is near the worst case); dropping either LoRA's alpha/rank is off by 0.05 or more.
    torch.testing.assert_close(delta, expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())
    assert (ma.scale, mb.scale) == (1.5, 1 / 3)


def test_mix_needs_a_non_zero_weight(two_loras, tmp_path):
    with pytest.raises(DraftError, match="non-zero weight"):
        save_mixed([LoraSpec(two_loras[0], 0.0)], tmp_path / "mix")


def test_lora_mix_cli_writes_a_model_card(two_loras, tmp_path, capsys, monkeypatch):
    a, b = two_loras
    argv = ["lora", "mix", f"{a}:0.5", f"{b}:0.75", "--out", str(tmp_path / "m")]
    monkeypatch.setattr("sys.argv", ["/venv/bin/draft", *argv])  # the card records the process's command line
    assert main(argv) == 0
    assert "rank 5" in capsys.readouterr().out
    card = (tmp_path / "m" / "README.md").read_text()
    assert "draft lora mix" in card and str(a) in card and "0.75" in card


# -- kohya ----------------------------------------------------------------------------------------
def test_kohya_names_follow_the_documented_layout():
    # REFERENCE.md §10, examples from kohya-ss/sd-scripts networks/lora.py
    assert kohya_name("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q") == (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    )
    assert kohya_name("text_encoder.text_model.encoder.layers.0.self_attn.q_proj") == (
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    )
    assert kohya_name("unet.up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj") == (
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_0_proj"
    )
    with pytest.raises(DraftError, match="unknown component"):
        kohya_name("vae.decoder.conv_in")


def test_kohya_tensors_shapes_and_alpha(two_loras):
    a, _ = two_loras
    lora = read_lora(a)
    state = to_kohya(lora)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q"  # default targets: no attn1
    down, up, alpha = state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"], state[f"{key}.alpha"]
    to_q = build_tiny_random().unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_q
    assert down.shape == (2, to_q.in_features) and up.shape == (to_q.out_features, 2)
    assert alpha.shape == () and alpha.item() == 3.0  # kohya's alpha/rank = peft's lora_alpha/r = 1.5
    assert len(state) == 3 * len(lora.modules)
    # Same keys as diffusers' own PEFT -> kohya converter (which writes alpha = rank).
    peft = {k: v for k, v in load_file(a / WEIGHT_NAME).items()}
    theirs = convert_state_dict_to_kohya(peft)
    assert set(theirs) == set(state)


def test_kohya_export_round_trips_through_diffusers(tiny, two_loras, tmp_path, capsys):
    a, _ = two_loras
    out = tmp_path / "exported.safetensors"
    assert main(["lora", "export", str(a), "--format", "kohya", "--out", str(out)]) == 0
    assert "kohya layout: lora_unet_*.lora_down" in capsys.readouterr().out  # the prefix it wrote
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["ss_network_module"] == "networks.lora"
    got = output_loaded_by_diffusers(tiny, tmp_path, weight_name=out.name)
    expected = output_with(tiny, [LoraSpec(a, 1.0)])
    assert (expected - unet_output(tiny.unet)).abs().max() > 1e-3
    # diffusers' kohya loader and ours: float32 forward passes that agree to a few ulps of the outputs'
    # scale (as in the mix test above); a wrong alpha/rank scale would be off by a share of the LoRA's >1e-3.
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)


def test_export_rejects_a_scale_and_other_formats(two_loras, tmp_path, capsys):
    a, _ = two_loras
    assert main(["lora", "export", f"{a}:0.5", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert main(["lora", "export", str(a), "--format", "comfy", "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "lora mix" in err and "kohya" in err


# -- fuse ------------------------------------------------------------------------------------------
def _sample(model, seed=0):
    sampler = DDIMSampler(steps=2, guidance_scale=3.0)
    noise = model.make_noise(2, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.decode(sampler.sample(model, model.encode_prompts(["a cat", "a dog"]), noise))


def test_fused_pipeline_loads_and_samples_like_the_lora(tiny, two_loras, tmp_path, capsys):
    a, _ = two_loras
    model_dir = tiny.save_pretrained(tmp_path / "base")
    out = tmp_path / "fused"
    assert main(["lora", "fuse", "--model", str(model_dir), "--lora", f"{a}:0.7", "--out", str(out)]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(out)  # a full, ordinary diffusers pipeline
    assert not any("lora" in n for n, _ in pipe.unet.named_parameters())
    with_lora = DiffusionModel(
        copy.deepcopy(tiny.unet), tiny.text_encoder, tiny.tokenizer, tiny.scheduler_config, tiny.vae
    )
    apply_loras(with_lora.unet, [LoraSpec(a, 0.7)])
    # Fused weights W + 0.7·s·BA against W·x + 0.7·s·B(A·x): the same images up to float32 rounding
    # (~2e-6 measured on images in [0, 1]); an unscaled or missing LoRA is off by its effect (>1e-3).
    expected = _sample(with_lora)
    torch.testing.assert_close(
        _sample(load_model(str(out), "cpu")), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item()
    )
    assert main(["lora", "fuse", "--model", str(model_dir), "--lora", str(a), "--out", str(out)]) == 2  # not empty


# -- model card -------------------------------------------------------------------------------------
def test_model_card_from_a_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "lora").mkdir(parents=True)
    (run / "config.yaml").write_text(
        "model: {name: digits}\nreward: {name: digit-classifier, target: 8}\nestimator: {name: draft-lv, n: 2}\n"
        "prompts: {source: digits}\n"
    )
    (run / "metrics.jsonl").write_text('{"step": 1, "reward_mean": -20.0}\n{"step": 2, "reward_mean": -3.25}\n')
    card = write_model_card(run / "lora", run_card_info(run, command="draft train --preset quickstart")).read_text()
    assert card.startswith("---\nbase_model: digits\n")
    for text in (
        "digit-classifier(target=8)",
        "draft-lv",
        "| steps | 2 |",
        "| final_reward | -3.25 |",
        "draft train --preset quickstart",
    ):
        assert text in card, text
