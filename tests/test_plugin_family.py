"""A worked external model family (tests/data/draft-pixart-family: PixArt-Sigma's PixArtTransformer2DModel + T5,
whose diffusers pipeline has no LoRA loader), registered as an installed plugin: ModelFamilyConformance passes
on it, ``draft train`` runs on it from the command line with a config and writes a LoRA that ``draft sample
--lora`` loads, and ``draft plan`` gives a figure built through its planning hook."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from draft_core.cli import main
from draft_core.plugins import discovery
from draft_core.testing import ModelFamilyConformance
from tests.test_plugins import FakeDistribution

SOURCE = Path(__file__).resolve().parent / "data" / "draft-pixart-family"


@pytest.fixture(scope="module")
def pixart():
    """The plugin module, importable as an installed distribution's would be."""
    sys.path.insert(0, str(SOURCE))
    try:
        yield __import__("draft_pixart_family")
    finally:
        sys.path.remove(str(SOURCE))


@pytest.fixture
def installed_family(pixart, monkeypatch):
    """draft-pixart-family installed beside everything installed here (its entry point ``pixart``)."""
    real = list(importlib.metadata.distributions())
    fake = FakeDistribution("draft-pixart-family", "0.1.0", {"pixart": "draft_pixart_family"})
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter([*real, fake]))
    monkeypatch.setattr(discovery, "_cache", None)
    return pixart


@pytest.fixture(scope="module")
def folder(pixart, tmp_path_factory):
    """The tiny model saved as PixArtSigmaPipeline writes it (model_index.json's _class_name picks the family)."""
    out = tmp_path_factory.mktemp("pixart") / "tiny-pixart"
    pixart.build_tiny_pixart_sigma().save_pretrained(out)
    return out


class TestPixArtSigmaFamily(ModelFamilyConformance):
    def make_model(self):
        return sys.modules["draft_pixart_family"].build_tiny_pixart_sigma()

    @pytest.fixture(scope="class", autouse=True)
    def _module(self, pixart):
        return pixart

    def pipeline_arguments(self, model, noise):
        # At 16 px PixArt's resolution binning would resize; draft encodes prompts without caption cleaning.
        return {
            **super().pipeline_arguments(model, noise),
            "use_resolution_binning": False,
            "clean_caption": False,
            "max_sequence_length": model.max_sequence_length,
        }


def test_the_family_is_found_from_the_folder_and_loads_back(installed_family, folder):
    from draft_core.models.loading import check_model, load_model

    assert check_model(str(folder)) is installed_family.PixArtSigmaModel
    model = load_model(str(folder), device="cpu", dtype=torch.float32)
    built = installed_family.build_tiny_pixart_sigma()
    x = built.make_noise(1, torch.Generator().manual_seed(0))
    cond = built.encode_prompts(["a cat"])
    with torch.no_grad():
        assert torch.equal(
            model.denoise(x, torch.tensor(300), model.encode_prompts(["a cat"]), 4.5),
            built.denoise(x, torch.tensor(300), cond, 4.5),
        )


def write_config(folder: Path, where: Path) -> Path:
    """A training config of the tiny PixArt model: sampler and guidance left to the family's defaults."""
    config = {
        "model": {"name": str(folder)},
        "lora": {"rank": 2},
        "sampler": {"steps": 2},
        "estimator": {"name": "draft-k", "k": 1},
        "reward": {"name": "jpeg-compressibility"},
        "train": {"steps": 2, "batch_size": 1, "sample_every": 0, "sample_per_prompt": 1, "sample_prompts": ["a cat"]},
    }
    path = where / "pixart.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_draft_train_from_a_config_then_sample_with_its_lora(installed_family, folder, tmp_path, capsys):
    path = write_config(folder, tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert (
        resolved["sampler"]["name"] == "ddim" and resolved["sampler"]["guidance_scale"] == 4.5
    )  # the family's defaults
    from safetensors import safe_open

    with safe_open(str(run / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert f.keys() and all(k.startswith("transformer.") for k in f.keys())
        assert json.loads(f.metadata()["lora_adapter_metadata"])["transformer.r"] == 2
    card = (run / "lora" / "README.md").read_text()
    assert "load_lora_weights" not in card and f"draft sample --model {folder}" in card  # no diffusers loader to name
    out = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--model",
                str(folder),
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
    ), capsys.readouterr().err
    assert (out / "0000.png").exists()


def test_draft_lora_mix_writes_through_the_family_hooks(installed_family, folder, tmp_path, capsys):
    """Half a random LoRA twice is the LoRA: the mix is written by the family's save_lora_layers (diffusers'
    layout, PixArtSigmaPipeline having no loader) and read by its lora_state_dict."""
    from draft_core.lora import LoraSpec, apply_loras, save_lora
    from draft_core.models.loading import load_model

    lora = save_lora(
        ModelFamilyConformance.with_lora(installed_family.build_tiny_pixart_sigma()), tmp_path / "lora"
    ).parent
    mixed = tmp_path / "mixed"
    assert main(["lora", "mix", f"{lora}:0.5", f"{lora}:0.5", "--family", str(folder), "--out", str(mixed)]) == 0, (
        capsys.readouterr().err
    )
    outputs = []
    for specs in ([], [LoraSpec(lora, 1.0)], [LoraSpec(mixed, 1.0)]):
        model = load_model(str(folder), device="cpu", dtype=torch.float32)
        apply_loras(model, specs)
        x = model.make_noise(1, torch.Generator().manual_seed(0))
        with torch.no_grad():
            outputs.append(model.denoise(x, torch.tensor(300), model.encode_prompts(["a cat"]), 4.5))
    base, alone, mix = outputs
    scale = alone.abs().max().item()
    assert (alone - base).abs().max() > 1e-3 * scale  # the LoRA matters
    torch.testing.assert_close(mix, alone, rtol=1e-5, atol=1e-5 * scale)  # float32, factors concatenated


def test_draft_plan_gives_a_figure_through_the_planning_hook(installed_family, folder, capsys, monkeypatch, tmp_path):
    calls = []
    hook = installed_family.PixArtSigmaModel.meta_model.__func__
    monkeypatch.setattr(
        installed_family.PixArtSigmaModel,
        "meta_model",
        classmethod(lambda cls, source, dtype: calls.append(source) or hook(cls, source, dtype)),
    )
    assert main(["plan", str(write_config(folder, tmp_path)), "--device-type", "cpu", "--json"]) == 0, (
        capsys.readouterr().err
    )
    plan = json.loads(capsys.readouterr().out)
    assert calls == [str(folder)]
    # The base weights the plan counts are the tiny model's own tensors (float32 on the CPU): parameters, and
    # buffers such as the transformer's positional table.
    model = installed_family.build_tiny_pixart_sigma()
    tensors = {id(t): t for m in model.modules() for t in [*m.parameters(), *m.buffers()]}
    weights = sum(t.numel() * t.element_size() for t in tensors.values())
    assert plan["breakdown_bytes"]["base weights"] == weights
    assert plan["peak_bytes"] > weights and plan["flops"] > 0


def test_the_kit_fails_a_family_that_breaks_the_contract(pixart, tmp_path):
    """Two common mistakes, each caught: guidance as out(c) + g·(out(c) − out(∅)), and a LoRA file whose
    metadata loses lora_alpha (read back at scale 1 instead of alpha/r)."""
    from draft_core.models.family import uses_cfg

    class OffByOneGuidance(pixart.PixArtSigmaModel):
        def denoise(self, x, t, cond, guidance=1.0):
            return super().denoise(x, t, cond, guidance + 1 if uses_cfg(guidance) else guidance)

    class DropsAlpha(pixart.PixArtSigmaModel):
        def save_lora_weights(self, folder, state, metadata=None):
            return super().save_lora_weights(
                folder, state, {k: v for k, v in (metadata or {}).items() if k != "lora_alpha"}
            )

    def built(cls):
        good = pixart.build_tiny_pixart_sigma()
        return cls(good.transformer, good.text_encoder, good.tokenizer, good.vae, good.scheduler_config, name="broken")

    kit = TestPixArtSigmaFamily()
    with pytest.raises(AssertionError, match=r"is not out\(∅\) \+ g·"):
        kit.test_guidance_rule(built(OffByOneGuidance))
    with pytest.raises(AssertionError, match="the LoRA read back gives other outputs"):
        kit.test_lora_round_trip(built(DropsAlpha), tmp_path)
