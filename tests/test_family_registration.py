"""Model families in the registry: a plugin family never silently takes a built-in's folders or name,
registration checks the family class, and a hook without @hookimpl is reported (draft_core.plugins)."""

from __future__ import annotations

import pytest

from draft_core.errors import PluginError
from draft_core.models.loading import check_model, family_of_pipeline
from draft_core.models.pipeline import DiffusionModel
from draft_core.plugins import format_plugins, load_registry
from tests.test_plugins import FakeDistribution, installed, isolated, make_module  # noqa: F401  (fixtures)

BUILTINS = """
    @hookimpl
    def register_models(register):
        from draft_core.models.pipeline import DiffusionModel
        register("sd", DiffusionModel)
"""

# A family that subclasses the built-in one and forgets to override pipeline_classes.
GREEDY = """
    from draft_core.models.pipeline import DiffusionModel

    class MySD(DiffusionModel):
        family = "mysd"

    @hookimpl
    def register_models(register):
        register("mysd", MySD)
"""

SD_AGAIN = """
    from draft_core.models.pipeline import DiffusionModel

    class OtherSD(DiffusionModel):
        pipeline_classes = ()

    @hookimpl
    def register_models(register):
        register("sd", OtherSD)
"""


def _install(installed, make_module, plugin: str) -> None:
    installed(
        FakeDistribution("draft-family-x", "1.0", {"x": make_module(plugin)}),
        FakeDistribution("draft-diffusion", "0.1.0", {"draft_models": make_module(BUILTINS)}),
    )


def test_a_plugin_family_claiming_a_builtin_pipeline_class_does_not_take_its_folders(make_module, installed, capsys):
    _install(installed, make_module, GREEDY)
    registry = load_registry(refresh=True)
    assert family_of_pipeline("StableDiffusionPipeline", "some/folder") is DiffusionModel  # the built-in
    assert family_of_pipeline("StableDiffusionPipeline", "some/folder", "mysd").__name__ == "MySD"
    [claim] = registry.claim_conflicts
    assert (claim.kept.name, claim.dropped.name) == ("sd", "mysd") and "StableDiffusionPipeline" in claim.classes
    warning = capsys.readouterr().err
    assert "'sd'" in warning and "'mysd'" in warning and "StableDiffusionPipeline" in warning
    assert "claimed twice" in format_plugins(registry)
    assert registry.describe()["claim_conflicts"][0]["dropped"] == "mysd"
    with pytest.raises(PluginError, match="both load StableDiffusionPipeline"):
        load_registry(refresh=True, strict=True)


def test_a_plugin_registering_a_builtin_family_name_is_refused_where_it_is_used(make_module, installed):
    _install(installed, make_module, SD_AGAIN)
    load_registry(refresh=True)
    for call in (
        lambda: check_model("tiny-random", family="sd"),
        lambda: check_model("tiny-random"),
        lambda: family_of_pipeline("StableDiffusionPipeline", "some/folder"),
    ):
        with pytest.raises(PluginError, match="model 'sd' is registered twice") as info:
            call()
        assert "draft-family-x" in str(info.value)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def register_rewards(register):\n    register('r', dict)\n", "defines register_rewards without @hookimpl"),
        (
            "@hookimpl\ndef register_models(register):\n    register('m', dict)\n",
            "not a subclass of draft_core.models.family.ModelFamily",
        ),
        (
            "from draft_core.models.family import ModelFamily\nclass F(ModelFamily):\n    pipeline_classes = 'PixArtSigmaPipeline'\n"
            "@hookimpl\ndef register_models(register):\n    register('f', F)\n",
            "pipeline_classes 'PixArtSigmaPipeline'",
        ),
    ],
)
def test_bad_registrations_are_reported_not_ignored(make_module, installed, source, expected):
    installed(FakeDistribution("draft-bad", "1.0", {"bad": make_module(source)}))
    [error] = load_registry(refresh=True).load_errors
    assert expected in error.error and error.entry_point == "bad"
    with pytest.raises(PluginError, match=expected.split("'")[0]):
        load_registry(refresh=True, strict=True)


BROKEN = """
    from draft_core.models.family import ModelFamily

    class Broken(ModelFamily):
        family = "broken"

        def encode_prompts(self, prompts):
            raise ValueError("the T5 tokenizer is missing")

    @hookimpl
    def register_models(register):
        register("broken", Broken)
"""


def test_an_error_raised_by_a_plugin_familys_method_names_the_plugin(make_module, installed, tmp_path):
    from draft_core.training.faults import FamilyPluginError, family_source, step_failure

    _install(installed, make_module, BROKEN)
    registry = load_registry(refresh=True)
    model = object.__new__(registry.get("model", "broken").factory)  # its methods, without weights
    source = family_source(model)
    try:
        model.encode_prompts(["a cat"])
    except ValueError as exc:
        error = step_failure(exc, 3, tmp_path, [(model, source)])
    assert isinstance(error, FamilyPluginError)
    message = str(error)
    assert "model 'broken' (plugin 'x' from distribution draft-family-x 1.0) raised ValueError" in message
    assert "in encode_prompts" in message and f"draft train --resume {tmp_path}" in message
    assert family_source(object.__new__(DiffusionModel)) is None  # a built-in family's errors are the core's


PLANNED = """
    import torch
    from draft_core.models.family import ModelFamily

    class Planned(ModelFamily):
        family = "planned"
        pipeline_classes = ("PlannedPipeline",)

        @classmethod
        def meta_model(cls, source, dtype):
            return ("built on meta", source, dtype)

    @hookimpl
    def register_models(register):
        register("planned", Planned)
"""


def test_draft_plan_builds_a_plugin_family_through_its_planning_hook(make_module, installed, tmp_path):
    import torch

    from draft_core.planning.architectures import meta_model

    _install(installed, make_module, PLANNED)
    load_registry(refresh=True)
    (tmp_path / "model_index.json").write_text('{"_class_name": "PlannedPipeline"}')
    assert meta_model(str(tmp_path), torch.bfloat16) == ("built on meta", str(tmp_path), torch.bfloat16)
    assert not DiffusionModel.plans_itself()  # the built-ins are planned by the core
