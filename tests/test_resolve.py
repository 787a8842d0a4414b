"""Resolving a config (draft_core.config.resolve): the same arguments through the command line and
through the Python API give the same config and the same pixels, for every family; the family's
sampling defaults; every plugin argument written down; ``--set plugin.name`` keeping what the new
plugin accepts; a LoRA sampled with the steps and guidance of the run that trained it."""

from __future__ import annotations

import pytest
import torch
import yaml

from draft_core import api, cli
from draft_core.config import Config, ModelSection, load_config, resolve_config
from draft_core.config.resolve import fill_defaults, sampling_for
from draft_core.errors import ConfigError
from draft_core.lora import LoraSpec
from draft_core.media import read_png_info
from draft_core.training.components import build_components
from draft_core.training.preflight import check_ready

# Every embedded model, with the sampler, steps and guidance it resolves to when none is given.
FAMILIES = {
    "tiny-random": ("ddim", 50, 7.5),
    "tiny-random-sdxl": ("ddim", 50, 7.5),
    "tiny-random-sd3": ("euler", 50, 7.5),
    "tiny-random-flux": ("euler", 28, 3.5),  # FLUX.1-dev's: FluxPipeline's 28 steps, distilled guidance 3.5
    "digits": ("ddim", 50, 7.5),
    "digits-flow": ("euler", 20, 4.0),  # its own (README; benchmarks/digits_quality.py)
}


@pytest.mark.parametrize("model", list(FAMILIES))
def test_cli_and_python_give_the_same_config_and_pixels(model, tmp_path, capsys):
    name, steps, guidance = FAMILIES[model]
    # Config: `draft train --model X --dry-run` prints what load_config, and a Config object, resolve to.
    assert cli.main(["train", "--model", model, "--dry-run", "--set", "sampler.steps=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    loaded = load_config(None, [f"model.name={model}", "sampler.steps=2"])
    built = Config(model=ModelSection(name=model), sampler={"steps": 2})
    components = build_components(built)  # resolves the object in place, as api.train does
    check_ready(built, components)  # what the command line accepts, Python accepts
    assert printed == loaded.to_dict() == built.to_dict()
    assert printed["sampler"] == {"name": name, "steps": 2, "guidance_scale": guidance, **printed["sampler"]}
    assert sampling_for(model) == {**printed["sampler"], "steps": steps}  # `draft sample` without --steps
    # Pixels: `draft sample` and api.sample, by name and with a loaded model object, at 2 steps.
    out = tmp_path / "cli"
    assert (
        cli.main(
            [
                "sample",
                "--model",
                model,
                "--prompt",
                "a cat",
                "--n",
                "1",
                "--steps",
                "2",
                "--device",
                "cpu",
                "--save-tensor",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from_cli = torch.load(out / "images.pt", weights_only=True)
    by_name = api.sample(model, "a cat", steps=2)
    by_object = api.sample(api.load_model(model, "cpu"), "a cat", steps=2)
    assert torch.equal(from_cli, by_name) and torch.equal(from_cli, by_object)
    meta = read_png_info(out / "0000.png")  # the PNG records what it was sampled with
    assert (meta["sampler"], meta["steps"], meta["guidance"]) == (name, 2, guidance)


def test_a_diffusion_sampler_on_a_flow_model_is_refused_with_one_message(no_model):
    for make in (
        lambda: load_config(None, ["model.name=tiny-random-flux", "sampler.name=ddim"]),
        lambda: build_components(Config(model=ModelSection(name="tiny-random-sd3"), sampler={"name": "ddpm"})),
        lambda: api.sample("digits-flow", "a cat", sampler="ddim", steps=2),
    ):
        with pytest.raises(ConfigError, match=r"sampler 'dd(im|pm)' is a diffusion sampler.*flow matching.*\(euler\)"):
            make()
    with pytest.raises(ConfigError, match=r"'sd' family.*use a diffusion sampler \(ddim, ddpm\)"):
        load_config(None, ["model.name=digits", "sampler.name=euler"])


def test_generate_refuses_a_sampler_of_the_wrong_kind():
    """api.generate takes a built sampler: a DDIM sampler on a flow model is a ConfigError, not diffusers' TypeError."""
    from draft_core.evaluation.baselines import build_method
    from draft_core.plugins import load_registry

    model = api.load_model("tiny-random-flux", "cpu")
    ddim = load_registry().build("sampler", "ddim", steps=2)
    with pytest.raises(ConfigError, match="flow-matching sampler"):
        api.generate(model, ddim, build_method("plain"), ["a cat"])


def test_every_plugin_argument_is_written_down_and_resolving_twice_changes_nothing(tmp_path):
    old = tmp_path / "config.yaml"  # a config.yaml as earlier versions wrote it: arguments left out
    old.write_text(
        "model: {name: digits}\nsampler: {name: ddim, steps: 20, guidance_scale: 7.5}\n"
        "estimator: {name: draft-lv, kl: 0.01}\nreward: {weights: {ink-coverage: 1.0, jpeg-compressibility: 0.5}}\n"
    )
    c = load_config(old)
    assert c.sampler == {"name": "ddim", "steps": 20, "guidance_scale": 7.5, "eta": 0.0}
    assert c.estimator == {"name": "draft-lv", "n": 2, "kl": {"beta": 0.01}}
    assert c.reward["args"] == {
        "ink-coverage": {"threshold": 0.5, "softness": 0.1, "ink": "light"},
        "jpeg-compressibility": {"quality": 50.0},
    }
    again = tmp_path / "again.yaml"
    c.dump(again)
    assert load_config(again) == c == resolve_config(load_config(again))
    components = build_components(c)
    assert components.estimator.beta == 0.01 and components.estimator.inner.n == 2


def test_defaults_yaml_cannot_hold_are_left_to_the_factory():
    marker = object()

    def factory(a: int = 1, b: tuple = (1, 2), c: object = marker, d: float = float("inf"), *, e: str) -> None: ...

    assert fill_defaults(factory, {"e": "x"}) == {"e": "x", "a": 1, "b": [1, 2]}


def test_renaming_a_sampler_keeps_what_the_new_one_accepts(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("sampler: {name: ddim, steps: 20, guidance_scale: 3.0, eta: 0.5}\n")
    c = load_config(path, ["sampler.name=ddpm"])
    assert c.sampler == {"name": "ddpm", "steps": 20, "guidance_scale": 3.0}  # steps kept: not the default 50
    err = capsys.readouterr().err
    assert (
        "[draft] warning: --set sampler.name=ddpm: dropped sampler.eta" in err and "kept guidance_scale, steps" in err
    )
    # The command line prints the same line, once the config has passed its checks.
    assert cli.main(["train", str(path), "--set", "sampler.name=ddpm", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["sampler"] == c.sampler and "dropped sampler.eta" in err
    # A reward renamed: the old reward's arguments the new one does not take are dropped and named.
    c = load_config(None, ["reward.name=ink-coverage"], preset="quickstart")
    assert c.reward["softness"] == 0.05  # ink-coverage is the preset's reward: nothing renamed
    c = load_config(None, ["reward.name=jpeg-compressibility"], preset="quickstart")
    assert c.reward == {"name": "jpeg-compressibility", "quality": 50.0}
    assert "dropped reward.softness of the previous reward" in capsys.readouterr().err  # the preset gave softness only


def test_a_lora_is_sampled_with_the_steps_and_guidance_of_its_run(tmp_path):
    run = tmp_path / "run"
    (run / "lora").mkdir(parents=True)
    Config(
        model=ModelSection(name="digits-flow"), sampler={"name": "flow-sde", "steps": 3, "guidance_scale": 2.0}
    ).dump(run / "config.yaml")
    lora = [LoraSpec(run / "lora")]
    assert sampling_for("digits-flow", loras=lora) == {"name": "euler", "steps": 3, "guidance_scale": 2.0}
    assert sampling_for("digits-flow", loras=lora, steps=5)["steps"] == 5  # given values win
    assert sampling_for("digits-flow") == {"name": "euler", "steps": 20, "guidance_scale": 4.0}
