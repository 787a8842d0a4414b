"""Fuzz wall: model folders from strangers (model_index.json naming any module and class, in any shape)
against `draft sample --model FOLDER` and `draft train --model FOLDER --dry-run`, in-process. Each ends in one
paragraph (exit 2); no module outside diffusers' and transformers' loadable classes is ever imported."""

from __future__ import annotations

import json
import sys

import pytest
from fuzz_support import TALLY, examples, judge, report, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from draft_core.models.folder_index import component_class


@pytest.fixture(scope="module", autouse=True)
def tally():
    TALLY.clear()
    yield
    print("\n" + report("model folders"))
    assert TALLY["tracebacks"] == 0 and TALLY["silent"] == 0


# Modules a folder must never get imported (each has an import-time effect or is dangerous to expose).
FORBIDDEN = ["this", "subprocess", "os", "builtins", "pickle", "shutil", "torch", "draft_core.cli"]
LIBRARIES = [
    *FORBIDDEN,
    "diffusers",
    "transformers",
    "stable_diffusion",
    "pipelines",
    "..",
    "diffusers.utils",
    "",
    None,
    3,
]
CLASSES = [
    "Nothing",
    "system",
    "Popen",
    "AutoencoderKL",
    "SD3Transformer2DModel",
    "CLIPTextModel",
    "CLIPTokenizer",
    "FlowMatchEulerDiscreteScheduler",
    "StableDiffusionSafetyChecker",
    "ModelMixin",
    "eval",
    "__class__",
    "logging",
    "",
    None,
    7,
]
PIPELINES = [
    "StableDiffusion3Pipeline",
    "StableDiffusionPipeline",
    "StableDiffusionXLPipeline",
    "FluxPipeline",
    "NoSuchPipeline",
    None,
    5,
]
VALID = [
    ["diffusers", "AutoencoderKL"],
    ["diffusers", "SD3Transformer2DModel"],
    ["transformers", "CLIPTextModel"],
    ["transformers", "CLIPTokenizer"],
    ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    [None, None],
]
entry = st.one_of(
    st.sampled_from(VALID),
    st.sampled_from(VALID),
    st.tuples(st.sampled_from(LIBRARIES), st.sampled_from(CLASSES)).map(list),
    st.sampled_from([None, [None, None], [], ["diffusers"], ["diffusers", "AutoencoderKL", "x"], "diffusers", 1]),
)
COMPONENTS = ["transformer", "unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "scheduler"]


def _valid(e) -> bool:
    """The oracle, stated on its own: [None, None]/None are absent; else [LIBRARY, CLASS] with LIBRARY
    diffusers, transformers or a diffusers pipeline module, CLASS one of that library's loadable classes."""
    if e is None or e == [None, None]:
        return True
    loadable = {
        "AutoencoderKL",
        "SD3Transformer2DModel",
        "CLIPTextModel",
        "CLIPTokenizer",
        "FlowMatchEulerDiscreteScheduler",
        "ModelMixin",
        "StableDiffusionSafetyChecker",
    }
    if not (isinstance(e, list) and len(e) == 2):
        return False
    library, name = e
    owners = {
        "AutoencoderKL": {"diffusers"},
        "SD3Transformer2DModel": {"diffusers"},
        "FlowMatchEulerDiscreteScheduler": {"diffusers"},
        "ModelMixin": {"diffusers"},
        "CLIPTextModel": {"transformers"},
        "CLIPTokenizer": {"transformers"},
        "StableDiffusionSafetyChecker": {"stable_diffusion"},
    }
    return name in loadable and library in owners[name]


@settings(
    max_examples=examples(50),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pipeline=st.sampled_from(PIPELINES),
    components=st.dictionaries(st.sampled_from(COMPONENTS), entry, max_size=4),
    command=st.sampled_from(["sample", "train"]),
    broken=st.sampled_from([None, "not json", "a list", "no index"]),
)
def test_model_folders_import_only_what_diffusers_loads(tmp_path_factory, pipeline, components, command, broken):
    folder = tmp_path_factory.mktemp("model")
    index = {"_class_name": pipeline, "_diffusers_version": "0.42.1", **components}
    text = {"not json": "{", "a list": "[1, 2]"}.get(broken, json.dumps(index))
    if broken != "no index":
        (folder / "model_index.json").write_text(text)
    before = {m for m in FORBIDDEN if m in sys.modules}
    argv = (
        ["sample", "--model", str(folder), "--prompt", "x", "--steps", "2", "--n", "1", "--out", str(folder / "o")]
        if command == "sample"
        else ["train", "--model", str(folder), "--dry-run"]
    )
    outcome = run_cli(argv)
    why = f"{index} ({broken}) via {command}"
    index_ok = broken is None and all(_valid(e) for e in components.values())
    # The folder holds no weights, so sampling ends in a clear error whatever the index; a dry run reads only the
    # index, so a well-formed one may pass it (exit 0) or be refused for its pipeline class.
    judge(outcome, None if index_ok and command == "train" else True, why)
    assert not ({m for m in FORBIDDEN if m in sys.modules} - before), (
        f"{why}: imported {set(FORBIDDEN) & set(sys.modules) - before}"
    )
    assert "Beautiful is better than ugly" not in outcome.out + outcome.err
    if broken is None and not all(_valid(e) for e in components.values()):
        assert "is not a class diffusers loads components from" in outcome.err, f"{why}: {outcome.err}"


def test_the_issues_folder_is_refused_without_importing_this(tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusion3Pipeline", "transformer": ["this", "Nothing"]})
    )
    sys.modules.pop("this", None)
    outcome = run_cli(["sample", "--model", str(folder), "--prompt", "x", "--steps", "2", "--out", str(tmp_path / "o")])
    assert outcome.code == 2 and "['this', 'Nothing']" in outcome.err and "transformer" in outcome.err
    assert "this" not in sys.modules and "Zen" not in capsys.readouterr().out + outcome.out


def test_the_sd3_loader_takes_only_loadable_classes():
    """The SD3 family's own loader looks components up through the same rule (a folder read by a hub id too)."""
    assert component_class("m", "vae", ["diffusers", "AutoencoderKL"]).__name__ == "AutoencoderKL"
    assert component_class("m", "tokenizer", ["transformers", "CLIPTokenizer"]).__name__ == "CLIPTokenizer"
    assert component_class("m", "text_encoder_3", [None, None]) is None
    for bad in (["os", "system"], ["diffusers", "utils"], ["transformers", "logging"], ["diffusers", "load_image"]):
        with pytest.raises(Exception, match="is not a class diffusers loads components from"):
            component_class("m", "vae", bad)
