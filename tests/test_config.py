"""Config: defaults, presets, YAML merging, ``--set`` overrides, error messages, round trips,
building every component by name without a model, and the prompt sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from draft_core.config import Config, load_config, parse_override, resolve_config
from draft_core.config.prompts import load_prompts
from draft_core.errors import ConfigError, DraftError
from draft_core.plugins import load_registry
from draft_core.rewarding.weighted import WeightedReward
from draft_core.samplers.ddim import DDIMSampler
from draft_core.training.components import build_components
from draft_estimators import FullBackprop, LowVariance, ReFL, TruncatedBackprop
from draft_rewards import InkCoverage, JpegCompressibility, JpegIncompressibility, RotationAnticorrelation

ANIMALS = (
    "cat dog horse monkey rabbit zebra spider bird sheep deer cow goat lion tiger bear raccoon fox "
    "wolf lizard beetle ant butterfly fish shark whale dolphin squirrel mouse rat snake turtle frog "
    "chicken duck goose bee pig turkey fly llama camel bat gorilla hedgehog kangaroo"
).split()  # REFERENCE §1: ddpo-pytorch simple_animals.txt, file order
# Resolved estimator sections: every argument of the factory written down, at its default.
DRAFT_K = {"name": "draft-k", "k": 1, "checkpoint": None, "k_range": None, "alignprop_range": None}
REFL = {"name": "refl", "m": 20}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(*args, **kwargs) -> str:
    """load_config(...) must raise ConfigError; returns its one-paragraph message."""
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


# -- defaults, presets, files -----------------------------------------------------------------
def test_defaults():
    c = load_config()
    assert c == resolve_config(Config())  # the resolved defaults: every plugin argument written down
    assert Config().sampler == {}  # unresolved: the model family's sampler
    assert c.model.name == "tiny-random"
    assert c.sampler == {"name": "ddim", "steps": 50, "guidance_scale": 7.5, "eta": 0.0}
    assert c.estimator == {"name": "draft-lv", "n": 2}
    assert c.reward == {"name": "jpeg-compressibility", "quality": 50.0}
    assert c.train.steps == 2000 and c.train.lr == 4e-4 and c.train.betas == [0.9, 0.999]
    assert c.prompts.source == "animals" and c.prompts.template == "{}"


def test_quickstart_preset():
    c = load_config(preset="quickstart")
    assert c.model.name == "digits" and c.lora.rank == 4
    assert c.sampler == {"name": "ddim", "steps": 20, "guidance_scale": 7.5, "eta": 0.0}
    assert c.estimator == {"name": "draft-lv", "n": 2, "kl": {"beta": 1e-3}}  # the wrapper with its arguments
    assert c.reward == {"name": "ink-coverage", "softness": 0.05, "threshold": 0.5, "ink": "light"}
    assert c.lora.targets == Config().lora.targets  # the paper's (A.1)
    assert c.prompts.source == "digits" and c.prompts.template == "{}"
    assert (c.train.steps, c.train.batch_size, c.train.lr, c.train.checkpoint_every) == (50, 4, 1e-3, 20)
    assert c.train.weight_decay == Config().train.weight_decay  # not in the preset: the default


def test_yaml_file_merges_over_defaults(tmp_path):
    path = write(tmp_path, "train:\n  steps: 5\nlora:\n  rank: 2\nsampler:\n  steps: 4\n")
    c = load_config(path)
    d = resolve_config(Config())
    assert c.train.steps == 5 and c.lora.rank == 2
    assert c.train.lr == d.train.lr and c.train.batch_size == d.train.batch_size  # rest of the section kept
    assert c.lora.targets == d.lora.targets
    assert c.sampler == {"name": "ddim", "steps": 4, "guidance_scale": 7.5, "eta": 0.0}  # partial plugin section
    assert (c.model, c.estimator, c.reward, c.prompts) == (d.model, d.estimator, d.reward, d.prompts)


def test_yaml_file_merges_over_a_preset(tmp_path):
    path = write(tmp_path, "train:\n  steps: 3\nestimator:\n  name: draft-k\n  k: 2\n")
    c = load_config(path, preset="quickstart")
    assert c.train.steps == 3 and c.train.lr == 1e-3
    assert c.estimator == {**DRAFT_K, "k": 2}  # a named section replaces the preset's


def test_empty_yaml_file_is_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing\n")) == load_config()


def test_plugin_section_shorthand_in_yaml(tmp_path):
    c = load_config(write(tmp_path, "estimator: draft-k\nreward: rotation-anticorrelation\n"), preset="quickstart")
    assert c.estimator == DRAFT_K  # the preset's n: 2 belongs to draft-lv
    assert c.reward["name"] == "rotation-anticorrelation" and "softness" not in c.reward


# -- --set ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "get", "expected"),
    [
        ("train.steps=7", lambda c: c.train.steps, 7),
        ("train.lr=0.5", lambda c: c.train.lr, 0.5),
        ("train.lr=1.0e-3", lambda c: c.train.lr, 1e-3),
        ("train.lr=2", lambda c: c.train.lr, 2.0),  # ints widen to floats
        ("train.betas=[0.9,0.99]", lambda c: c.train.betas, [0.9, 0.99]),
        ("train.grad_clip=null", lambda c: c.train.grad_clip, None),
        ("train.sample_prompts=[a cat, a dog]", lambda c: c.train.sample_prompts, ["a cat", "a dog"]),
        ("train.lr_decay=sqrt", lambda c: c.train.lr_decay, "sqrt"),
        ("lora.alpha=16", lambda c: c.lora.alpha, 16.0),
        ("lora.targets=[to_q, to_v]", lambda c: c.lora.targets, ["to_q", "to_v"]),
        ("lora.targets=attention+ff", lambda c: c.lora.targets, "attention+ff"),
        ("train.checkpoint_decode=false", lambda c: c.train.checkpoint_decode, False),
        ("train.checkpoint_reward=true", lambda c: c.train.checkpoint_reward, True),
        ("train.checkpoint_reward=auto", lambda c: c.train.checkpoint_reward, "auto"),
        ("model.name=/some/folder", lambda c: c.model.name, "/some/folder"),
        ("model.revision=null", lambda c: c.model.revision, None),
        ("sampler.guidance_scale=1.0", lambda c: c.sampler["guidance_scale"], 1.0),
        ("sampler.eta=0.5", lambda c: c.sampler["eta"], 0.5),
        ("estimator.checkpoint=true", lambda c: c.estimator["checkpoint"], True),
        (
            "reward.args.jpeg-compressibility.quality=30",
            lambda c: c.reward["args"],
            {"jpeg-compressibility": {"quality": 30}},
        ),
        ("prompts.template=a photo of a {}", lambda c: c.prompts.template, "a photo of a {}"),
    ],
)
def test_set_values_are_read_as_yaml(override, get, expected):
    value = get(load_config(overrides=[override]))
    assert value == expected and type(value) is type(expected)


def test_set_several_at_once():
    c = load_config(overrides=["train.steps=10", "train.mixed_precision=bf16", "estimator.checkpoint=false"])
    assert c.train.steps == 10 and type(c.train.steps) is int
    assert c.estimator["checkpoint"] is False


def test_set_overrides_file_and_preset(tmp_path):
    path = write(tmp_path, "train:\n  steps: 5\n  seed: 3\n")
    c = load_config(path, ["train.steps=9"], preset="quickstart")
    assert (c.train.steps, c.train.seed, c.train.lr) == (9, 3, 1e-3)


def test_later_set_wins():
    assert load_config(overrides=["train.steps=3", "train.steps=4"]).train.steps == 4


@pytest.mark.parametrize("how", ["set", "file"])
def test_exponent_without_dot_is_a_float(tmp_path, how):
    if how == "set":
        lr = load_config(overrides=["train.lr=1e-3"]).train.lr
    else:
        lr = load_config(write(tmp_path, "train:\n  lr: 1e-3\n")).train.lr
    assert lr == 1e-3 and type(lr) is float


def test_parse_override():
    assert parse_override("a.b.c=[1, 2]") == (["a", "b", "c"], [1, 2])
    assert parse_override("x=") == (["x"], "")
    assert parse_override("x=a=b") == (["x"], "a=b")  # the first '=' splits


# -- changing a plugin by name ---------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [["estimator.name=draft-k", "estimator.k=5"], ["estimator.k=5", "estimator.name=draft-k"]],
    ids=["name-first", "name-last"],
)
def test_renaming_a_plugin_drops_the_old_plugins_arguments(overrides, capsys):
    c = load_config(overrides=overrides, preset="quickstart")
    # The preset's n: 2 is gone (draft-k takes no n), said on stderr; its kl wrapper wraps draft-k now.
    assert c.estimator == {**DRAFT_K, "k": 5, "kl": {"beta": 1e-3}}
    assert (
        "dropped estimator.n of the previous estimator, which 'draft-k' does not accept; kept kl"
        in capsys.readouterr().err
    )
    components = build_components(c)
    inner = components.estimator.inner
    assert isinstance(inner, TruncatedBackprop) and inner.k == 5 and components.estimator.beta == 1e-3


def test_renaming_in_a_file_then_set(tmp_path):
    path = write(tmp_path, "estimator:\n  name: draft-lv\n  n: 4\n")
    assert load_config(path, ["estimator.name=refl", "estimator.m=3"]).estimator == {**REFL, "m": 3}


def test_setting_the_same_name_keeps_the_arguments():
    c = load_config(overrides=["estimator.name=draft-lv"], preset="quickstart")
    assert c.estimator == {"name": "draft-lv", "n": 2, "kl": {"beta": 1e-3}}


def test_set_plugin_shorthand():
    c = load_config(overrides=["estimator=draft-k", "estimator.k=3"], preset="quickstart")
    assert c.estimator == {**DRAFT_K, "k": 3}  # a whole section replaces the preset's, kl included


def test_set_argument_without_renaming_keeps_the_name():
    assert load_config(overrides=["estimator.n=5"], preset="quickstart").estimator == {
        "name": "draft-lv",
        "n": 5,
        "kl": {"beta": 1e-3},
    }


# -- errors -----------------------------------------------------------------------------------
def test_unknown_top_level_key():
    message = config_error(overrides=["trian.steps=3"])
    assert "'trian'" in message and "model, lora, sampler, estimator, reward, prompts, train" in message
    assert "Did you mean 'train'?" in message


def test_unknown_nested_key_suggests():
    message = config_error(overrides=["train.stpes=3"])
    assert "'train.stpes'" in message and "Did you mean 'steps'?" in message and "batch_size" in message


def test_unknown_key_in_a_file(tmp_path):
    message = config_error(write(tmp_path, "lora:\n  rnak: 2\n"))
    assert "'lora.rnak'" in message and "Did you mean 'rank'?" in message


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("train.lr=abc", "train.lr", "float"),  # str for float
        ("train.steps=1.5", "train.steps", "int"),  # float for int
        ("train.steps=true", "train.steps", "int"),  # bool for int
        ("train.lr=true", "train.lr", "float"),  # bool for float
        ("train.betas=[0.9, a]", "train.betas[1]", "float"),  # list item
        ("train.betas=0.9", "train.betas", "a list of float"),
        ("train.sample_prompts=[a, 1]", "train.sample_prompts", "a list of str or null"),
        ("model.name=5", "model.name", "str"),
        ("lora.rank=2.0", "lora.rank", "int"),
    ],
)
def test_wrong_type(override, key, expected):
    message = config_error(overrides=[override])
    assert f"'{key}'" in message and f"must be {expected}" in message


@pytest.mark.parametrize(
    ("override", "choices"),
    [
        ("train.lr_decay=cos", "'none' | 'sqrt'"),
        ("model.dtype=float64", "'auto' | 'float32' | 'bfloat16' | 'float16'"),
        ("train.mixed_precision=fp8", "'no' | 'bf16' | 'fp16'"),
    ],
)
def test_bad_choice_lists_the_choices(override, choices):
    message = config_error(overrides=[override])
    assert override.split("=")[1] in message and choices in message


@pytest.mark.parametrize(
    ("text", "section"),
    [
        ("train: 3\n", "train"),
        ("lora: [1, 2]\n", "lora"),
        ("estimator: 3\n", "estimator"),
        ("reward: null\n", "reward"),
    ],
)
def test_section_that_is_not_a_mapping(tmp_path, text, section):
    message = config_error(write(tmp_path, text))
    assert f"'{section}'" in message and "mapping" in message


def test_malformed_set():
    message = config_error(overrides=["train.steps"])
    assert "'train.steps'" in message and "dotted.key=value" in message
    assert "dotted key" in config_error(overrides=["train..steps=3"])


def test_missing_file(tmp_path):
    message = config_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in message and "does not exist" in message


def test_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "train:\n  steps: [1, 2\n", "broken.yaml"))
    message = str(info.value)
    # PyYAML's own explanation spans lines (with a caret); it must still be one error, no blank line.
    assert "broken.yaml" in message and "not valid YAML" in message and "line 2" in message
    assert "\n\n" not in message


def test_yaml_that_is_a_list(tmp_path):
    message = config_error(write(tmp_path, "- train\n- steps\n", "list.yaml"))
    assert "list.yaml" in message and "mapping" in message and "list" in message


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.steps=0", "train.steps"),
        ("train.batch_size=-1", "train.batch_size"),
        ("lora.rank=0", "lora.rank"),
        ("train.lr=0", "train.lr"),
        ("train.lr=-0.1", "train.lr"),
        ("train.sample_every=-1", "train.sample_every"),
        ("train.betas=[0.9, 1.0]", "train.betas"),
        ("train.betas=[-0.1, 0.9]", "train.betas"),
        ("train.betas=[0.9]", "train.betas"),
        ("train.grad_clip=0", "train.grad_clip"),
        ("train.grad_clip=-1", "train.grad_clip"),
        ("prompts.template=a photo", "prompts.template"),
    ],
)
def test_range_checks(override, key):
    message = config_error(overrides=[override])
    assert f"'{key}'" in message and "must" in message


@pytest.mark.parametrize("override", ["train.mixed_precision=fp16", "model.dtype=float16"])
def test_float16_training_is_refused_with_the_reason(override):
    message = config_error(overrides=[override])
    assert f"'{override.split('=')[0]}'" in message and "loss scaling" in message and "bfloat16" in message


def test_lora_targets_name_a_known_set():
    message = config_error(overrides=["lora.targets=attention"])
    assert "'attention'" in message and "cross-attention+ff" in message and "attention+ff" in message
    assert "'train.checkpoint_decode'" in config_error(overrides=["train.checkpoint_decode=sometimes"])


@pytest.mark.parametrize("override", ["train.lr=.nan", "train.grad_clip=.nan"])
def test_nan_is_rejected(override):
    config_error(overrides=[override])


def test_reward_weights_must_be_numbers():
    message = config_error(overrides=["reward={weights: {jpeg-compressibility: x}}"])
    assert "'reward.weights.jpeg-compressibility'" in message and "number" in message and "'x'" in message
    assert "True" in config_error(overrides=["reward={weights: {jpeg-compressibility: true}}"])
    assert "reward.weights" in config_error(overrides=["reward={weights: {}}"])
    assert "reward.weights" in config_error(overrides=["reward={weights: [jpeg-compressibility]}"])


def test_reward_weights_and_a_name():
    message = config_error(overrides=["reward.weights={jpeg-compressibility: 1}"], preset="quickstart")
    assert "'weights'" in message and "'name'" in message and "'softness'" in message and "reward.args" in message


def test_plugin_section_needs_a_name():
    assert "'estimator' needs a 'name'" in config_error(overrides=["estimator.name=null"])
    assert "'reward' needs a 'name'" in config_error(overrides=["reward.name=null"])


def test_unknown_preset_suggests():
    message = config_error(preset="quickstrat")
    assert "'quickstrat'" in message and "quickstart" in message and "Did you mean 'quickstart'?" in message


# -- round trip -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        (None, []),
        ("quickstart", []),
        (
            "quickstart",
            [
                "reward={weights: {jpeg-compressibility: 2, rotation-anticorrelation: -1}, "
                "args: {jpeg-compressibility: {quality: 30}}}",
                "estimator.name=draft-k",
                "estimator.k=3",
                "train.lr=1.0e-5",
                "train.grad_clip=null",
                "lora.alpha=2.5",
                "prompts.items=[a, b]",
                "model.revision=main",
                "train.lr_decay=sqrt",
            ],
        ),
    ],
    ids=["defaults", "quickstart", "changed"],
)
def test_dump_and_load_round_trip(tmp_path, preset, overrides):
    config = load_config(overrides=overrides, preset=preset)
    config.dump(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert again.to_dict() == config.to_dict()


# -- build_components ---------------------------------------------------------------------------
def test_builds_the_quickstart_components_without_a_model(no_model):
    components = build_components(load_config(preset="quickstart"))
    assert isinstance(components.sampler, DDIMSampler) and components.sampler.num_steps == 20
    assert isinstance(components.estimator.inner, LowVariance) and components.estimator.inner.n == 2
    assert components.estimator.beta == 1e-3  # the KL wrapper around it
    assert isinstance(components.reward, InkCoverage) and components.reward.softness == 0.05
    assert components.prompts[0] == "a handwritten digit zero" and len(components.prompts) == 10


@pytest.mark.parametrize(
    ("overrides", "kind", "cls"),
    [
        (["sampler={name: ddim, steps: 4, guidance_scale: 1.0, eta: 0.5}"], "sampler", DDIMSampler),
        (["estimator=draft"], "estimator", FullBackprop),
        (["estimator={name: draft-k, k: 3}"], "estimator", TruncatedBackprop),
        (["estimator={name: draft-lv, n: 0}"], "estimator", LowVariance),
        (["estimator={name: refl, m: 5}"], "estimator", ReFL),
        (["reward=jpeg-incompressibility"], "reward", JpegIncompressibility),
        (["reward={name: jpeg-compressibility, quality: 20}"], "reward", JpegCompressibility),
        (["reward=rotation-anticorrelation"], "reward", RotationAnticorrelation),
    ],
)
def test_builds_each_builtin_by_name(no_model, overrides, kind, cls):
    components = build_components(load_config(overrides=overrides))
    built = getattr(components, kind)
    assert type(built) is cls
    section = getattr(load_config(overrides=overrides), kind)
    for key, value in section.items():  # each argument reached the object
        if key != "name":
            assert getattr(built, "num_steps" if key == "steps" else key) == value, key


def test_reward_weights_build_a_weighted_sum(no_model):
    c = load_config(
        overrides=[
            "reward={weights: {jpeg-compressibility: 2, rotation-anticorrelation: -0.5}}",
            "reward.args.jpeg-compressibility.quality=30",
        ]
    )
    reward = build_components(c).reward
    assert isinstance(reward, WeightedReward)
    assert set(reward.terms) == {"jpeg-compressibility", "rotation-anticorrelation"}
    jpeg, w_jpeg = reward.terms["jpeg-compressibility"]
    rot, w_rot = reward.terms["rotation-anticorrelation"]
    assert isinstance(jpeg, JpegCompressibility) and jpeg.quality == 30 and w_jpeg == 2.0
    assert isinstance(rot, RotationAnticorrelation) and w_rot == -0.5


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        (
            ["reward.name=jpeg-compresibility"],
            "PluginError",
            ["'jpeg-compresibility'", "Registered rewards", "Did you mean 'jpeg-compressibility'?"],
        ),
        (
            ["reward={weights: {jpeg-compresibility: 1}}"],
            "PluginError",
            ["'jpeg-compresibility'", "Did you mean 'jpeg-compressibility'?"],
        ),
        (["estimator.name=draft-kk"], "PluginError", ["'draft-kk'", "draft-lv", "Did you mean 'draft-k'?"]),
        (["sampler.name=heun"], "PluginError", ["'heun'", "cps, ddim, ddpm, euler, flow-sde"]),
        (["reward.qualty=3"], "PluginError", ["'qualty'", "did you mean 'quality'?", "quality=50.0"]),
        (["sampler.stesp=3"], "PluginError", ["'stesp'", "did you mean 'steps'?"]),
        (["estimator.k=3"], "PluginError", ["draft-lv", "'k'", "n=2"]),  # draft-lv takes n, not k
        (
            ["reward={weights: {jpeg-compressibility: 1}, args: {rotation-anticorrelation: {}}}"],
            "ConfigError",
            ["reward.args", "rotation-anticorrelation", "jpeg-compressibility"],
        ),
        (["estimator={name: draft-k, k: 51}"], "ConfigError", ["estimator.k=51", "sampler.steps=50"]),
        (["estimator={name: draft-k, k: 5}", "sampler.steps=4"], "ConfigError", ["estimator.k=5", "sampler.steps=4"]),
        (["estimator={name: refl}", "sampler.steps=10"], "ConfigError", ["estimator.m=20", "sampler.steps=10"]),
        (["estimator={name: draft-k, k: 0}"], "ConfigError", ["estimator.k", "0"]),
        (["sampler.steps=0"], "ConfigError", ["sampler.steps", "0"]),
        (["prompts.source=animls"], "ConfigError", ["'animls'", "Did you mean 'animals'?"]),
    ],
)
def test_component_errors_before_any_model_loads(no_model, overrides, error, words):
    config = load_config(overrides=overrides)
    with pytest.raises(DraftError) as info:
        build_components(config)
    assert type(info.value).__name__ == error
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(
    "overrides",
    [
        ["reward={weights: {jpeg-compressibility: 1}, args: 3}"],
        ["reward={weights: {jpeg-compressibility: 1}, args: {jpeg-compressibility: 5}}"],
        ["reward={weights: {jpeg-compressibility: .nan}}"],
        ["reward.quality=0"],
        ["sampler.guidance_scale=abc"],
        ["sampler.eta=abc"],
        ["prompts.template=a {} in {style}"],
        ["prompts.template={} and {}"],
    ],
    ids=[
        "args-not-mapping",
        "args-entry-not-mapping",
        "nan-weight",
        "reward-quality-0",
        "guidance-str",
        "eta-str",
        "template-named-field",
        "template-two-fields",
    ],
)
def test_bad_arguments_are_draft_errors(no_model, overrides):
    with pytest.raises(DraftError):
        build_components(load_config(overrides=overrides))


def test_build_components_uses_the_given_registry(no_model):
    registry = load_registry()
    components = build_components(load_config(), registry)
    assert isinstance(components.estimator, LowVariance)


# -- prompts ----------------------------------------------------------------------------------
def test_animals_is_the_reference_list_in_order():
    prompts = load_prompts("animals")
    assert len(prompts) == 45
    assert prompts == ANIMALS
    assert prompts[0] == "cat" and prompts[-1] == "kangaroo"


def test_template_applies():
    assert load_prompts("animals", template="a photo of a {}")[:2] == ["a photo of a cat", "a photo of a dog"]
    assert load_prompts(items=["x {y}"], template="<{}>") == ["<x {y}>"]  # braces in prompts are text


def test_prompt_file_skips_blanks_and_comments(tmp_path):
    path = write(tmp_path, "# my prompts\n\n  a red car  \n\t\n  # indented comment\nblue sky\n", "p.txt")
    assert load_prompts(str(path)) == ["a red car", "blue sky"]
    assert load_prompts(str(path), template="{}, oil painting") == ["a red car, oil painting", "blue sky, oil painting"]


def test_explicit_items_override_the_source(tmp_path):
    assert load_prompts("no/such/file.txt", items=["a", "b"]) == ["a", "b"]
    c = load_config(overrides=["prompts.items=[one, two]", "prompts.template=a {}"])
    assert build_components(c).prompts == ["a one", "a two"]


def test_prompt_file_from_config(tmp_path):
    path = write(tmp_path, "frog\nowl\n", "p.txt")
    assert build_components(load_config(overrides=[f"prompts.source={path}"])).prompts == ["frog", "owl"]


def test_unknown_prompt_source_suggests():
    with pytest.raises(ConfigError) as info:
        load_prompts("animls")
    message = str(info.value)
    assert "'animls'" in message and "animals" in message and "Did you mean 'animals'?" in message


def test_empty_prompt_file(tmp_path):
    path = write(tmp_path, "# only a comment\n\n   \n", "empty.txt")
    with pytest.raises(ConfigError, match="holds no prompts"):
        load_prompts(str(path))
    with pytest.raises(ConfigError, match="holds no prompts"):
        load_prompts(str(write(tmp_path, "", "zero.txt")))
