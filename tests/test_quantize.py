"""model.quantize: an int8 frozen base (torchao through diffusers' quantizer) trains a LoRA whose file loads
into the plain, unquantized diffusers pipeline; nf4 and fp8 say what they need before any weights load."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors.torch import load_file

import draft_core.models.loading as loading
from draft_core import cli
from draft_core.config import load_config
from draft_core.errors import ConfigError
from draft_core.models.loading import load_model
from draft_core.models.quantize import check_quantize, quantized_layers

FAST = [
    "model.name=tiny-random-flux",
    "model.quantize=int8",
    "sampler={name: euler, steps: 2, guidance_scale: 3.5}",
    "reward.name=jpeg-compressibility",
    "prompts.items=[a cat, a dog]",
    "estimator={name: draft-k, k: 1}",
    "train.batch_size=2",
    "train.lr=0.01",
    "train.steps=2",
    "train.sample_every=0",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat]",
    "lora.rank=2",
]
PROMPTS = ["a cat", "a dog"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def outputs(model):
    x = model.make_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.denoise(x, torch.tensor(700.0), model.encode_prompts(PROMPTS), 3.5)


def test_values_and_what_nf4_and_fp8_need(monkeypatch, tmp_path, capsys):
    assert load_config(None, []).model.quantize == "none"
    for value in ("none", "int8", "nf4", "fp8"):
        assert load_config(None, [f"model.quantize={value}"]).model.quantize == value
    with pytest.raises(ConfigError, match="model.quantize.*'none' \\| 'int8' \\| 'nf4' \\| 'fp8'"):
        load_config(None, ["model.quantize=int4"])

    def refuse():
        raise AssertionError("weights were built before the quantization setting was checked")

    monkeypatch.setitem(loading.EMBEDDED, "tiny-random", refuse)
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    with pytest.raises(ConfigError) as err:
        load_model("tiny-random", "cpu", quantize="nf4")
    assert "needs a CUDA GPU" in str(err.value) and ("the bitsandbytes package" in str(err.value)) != bnb
    assert "no weights were loaded" in str(err.value) and "model.quantize: int8" in str(err.value)
    with pytest.raises(ConfigError, match="fp8 cannot run here: it needs a CUDA GPU"):
        load_model("tiny-random", "cpu", quantize="fp8")
    check_quantize("int8", "cpu")  # torchao is installed with the suite ([quantize] extra)
    out = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--preset",
                "quickstart",
                "--out",
                str(out),
                "--no-progress",
                "--set",
                "model.name=tiny-random",
                "--set",
                "model.quantize=nf4",
            ]
        )
        == 2
    )
    assert "model.quantize: nf4 cannot run here" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("name", ["tiny-random", "tiny-random-sd3"])
def test_int8_quantizes_every_linear_layer_and_stays_close(name):
    plain, quant = load_model(name, "cpu"), load_model(name, "cpu", quantize="int8")
    linears = sum(isinstance(m, torch.nn.Linear) for m in quant.denoiser.modules())
    assert linears > 0 and quantized_layers(quant.denoiser) == linears and quantized_layers(plain.denoiser) == 0
    # Per-channel int8 rounds each weight by at most 1/254 of its row's largest; over the tiny models'
    # few layers the output moves by a few tenths of a percent (RESULTS section 9), not zero and not more than 2%.
    err = rel_err(outputs(quant), outputs(plain))
    assert 1e-5 < err < 2e-2


def test_lora_trained_on_int8_base_loads_into_the_plain_pipeline(tmp_path):
    out = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--preset",
                "quickstart",
                "--out",
                str(out),
                "--no-progress",
                *sum((["--set", o] for o in FAST), []),
            ]
        )
        == 0
    )
    saved = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    assert saved and all(k.startswith("transformer.") for k in saved)
    base = outputs(load_model("tiny-random-flux", "cpu"))
    plain = load_model("tiny-random-flux", "cpu")  # float32, unquantized: diffusers' own loader puts the LoRA on it
    plain.pipeline().load_lora_weights(str(out / "lora"))
    params = dict(plain.transformer.named_parameters())
    for key, value in saved.items():  # every tensor of the file, in place under its peft name
        name = (
            key[len("transformer.") :]
            .replace(".lora_A.", ".lora_A.default_0.")
            .replace(".lora_B.", ".lora_B.default_0.")
        )
        assert torch.equal(params[name].detach(), value), key
    quant = load_model("tiny-random-flux", "cpu", quantize="int8")
    quant.pipeline().load_lora_weights(str(out / "lora"))
    with_lora, with_lora_int8 = outputs(plain), outputs(quant)
    assert rel_err(with_lora, base) > 1e-3  # the trained LoRA changes the output
    assert rel_err(with_lora_int8, with_lora) < 2e-2  # and the int8 base with it stays within int8's error
