"""The model-family contract's LoRA side: peft met by the core for any diffusers model, LoRA files as
family hooks checked before a run, and a model card naming what really loads the file."""

from __future__ import annotations

import pytest
import torch
from diffusers import PixArtTransformer2DModel

from draft_core.errors import DraftError
from draft_core.lora.adapters import adapters_enabled, add_lora, with_peft
from draft_core.lora.card import write_model_card
from draft_core.models.family import ModelFamily
from draft_core.plugins import load_registry
from draft_core.training.preflight import check_lora_files


def _pixart() -> PixArtTransformer2DModel:
    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        sample_size=4,
        num_layers=1,
        attention_head_dim=4,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,
        cross_attention_dim=8,
        caption_channels=6,
        norm_type="ada_norm_single",
        patch_size=2,
    )


def test_a_diffusers_model_without_peft_mixin_gets_a_lora_from_the_core():
    model = _pixart()
    assert not hasattr(model, "add_adapter")  # diffusers' PixArt transformer lacks PeftAdapterMixin
    x, t, text = torch.randn(1, 4, 4, 4), torch.tensor([10]), torch.randn(1, 3, 6)
    kw = {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    base = model(x, encoder_hidden_states=text, timestep=t, **kw).sample
    params = add_lora(model, rank=2, targets=["to_q", "to_v"], init="gaussian")
    assert (
        type(model).__name__ == "PixArtTransformer2DModel" and len(params) == 8
    )  # A and B of to_q, to_v in attn1, attn2
    with torch.no_grad():
        for p in params:
            p.add_(0.5)
    on = model(x, encoder_hidden_states=text, timestep=t, **kw).sample
    with adapters_enabled(model, False):
        off = model(x, encoder_hidden_states=text, timestep=t, **kw).sample
    assert torch.equal(off, base) and not torch.allclose(on, base)


def test_a_module_that_cannot_carry_a_lora_is_named():
    with pytest.raises(DraftError, match="torch.nn.modules.linear.Linear, which cannot carry a LoRA"):
        with_peft(torch.nn.Linear(2, 2))


class NoLoader(ModelFamily):
    family = "no-loader"
    denoiser_name = "transformer"
    pipeline_classes = ("PixArtSigmaPipeline",)
    lora_pipeline = "PixArtSigmaPipeline"  # a diffusers class without save_lora_weights/lora_state_dict


class Misspelt(NoLoader):
    lora_pipeline = "PixArtSigmaPipelin"


def test_lora_files_are_checked_before_a_run():
    problem = Misspelt.lora_file_problem()
    assert "'no-loader'" in problem and "'PixArtSigmaPipelin', which is not a diffusers class" in problem
    with pytest.raises(DraftError, match="leave lora_pipeline empty"):
        check_lora_files(Misspelt)
    assert NoLoader.lora_file_problem() == ""  # no loader: diffusers' layout, written and read by the core
    for entry in load_registry().entries("model"):
        assert entry.factory.lora_file_problem() == "", entry.name


def test_a_family_without_a_lora_loader_writes_and_reads_diffusers_layout(tmp_path):
    from safetensors import safe_open

    state = {
        "transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(2, 8),
        "transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(8, 2),
    }
    config = {"r": 2, "lora_alpha": 3.0, "target_modules": {"to_q"}}
    file = object.__new__(NoLoader).save_lora_weights(tmp_path, state, config)
    with safe_open(str(file), "pt") as f:  # the layout diffusers' loaders write
        assert sorted(f.keys()) == sorted(f"transformer.{k}" for k in state)
        assert '"transformer.lora_alpha": 3.0' in f.metadata()["lora_adapter_metadata"]
    read, alphas, metadata = NoLoader.lora_state_dict(str(tmp_path), weight_name=file.name)
    assert alphas is None and metadata == {
        "transformer.r": 2,
        "transformer.lora_alpha": 3.0,
        "transformer.target_modules": ["to_q"],
    }
    assert all(torch.equal(read[f"transformer.{k}"], v) for k, v in state.items())
    with pytest.raises(DraftError, match="text_encoder, which a 'no-loader' LoRA file does not hold"):
        NoLoader.save_lora_layers(tmp_path, {"text_encoder": state}, {"text_encoder": None})


def test_the_model_card_names_what_loads_the_file(tmp_path, monkeypatch):
    import draft_core.models.loading as loading

    sd = write_model_card(tmp_path / "sd", {"base_model": "some/sd"}, usage=None)
    monkeypatch.setattr(loading, "check_model", lambda name, *a, **k: NoLoader if name == "some/pixart" else None)
    pixart = write_model_card(tmp_path / "pixart", {"base_model": "some/pixart"}).read_text()
    assert "pipe.load_lora_weights" in sd.read_text()  # sd: not found offline -> Stable Diffusion's lines
    assert "load_lora_weights" not in pixart and "draft sample --model some/pixart --lora" in pixart
