"""Tests of draft_core.plugins: discovery, attribution, failure reporting and name errors.

Installed distributions are faked by monkeypatching ``importlib.metadata.distributions``
(as pytest's own tests do), so only the fakes are seen; one test installs a real
distribution with pip into a folder and discovers it in a fresh interpreter.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from draft_core.errors import PluginError
from draft_core.plugins import KNOWN_EXTERNAL, Registry, discovery, format_plugins, hookspecs, load_registry

DATA = Path(__file__).parent / "data"


class FakeDistribution:
    """What discovery reads from an installed distribution: name, version, entry points."""

    def __init__(self, name: str, version: str, entry_points: dict[str, str]) -> None:
        self.metadata = {"name": name}
        self.version = version
        self.entry_points = [
            importlib.metadata.EntryPoint(ep, value, discovery.GROUP) for ep, value in entry_points.items()
        ] + [importlib.metadata.EntryPoint("unrelated", "os", "console_scripts")]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch):
    """No env settings from outside, and the module cache restored afterwards.

    Tests build registries from fakes; setting the cache attribute through
    monkeypatch puts back whatever registry other test files had cached.
    """
    monkeypatch.delenv("DRAFT_PLUGINS", raising=False)
    monkeypatch.delenv("DRAFT_STRICT_PLUGINS", raising=False)
    monkeypatch.setattr(discovery, "_cache", None)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("fakeplug_"):
            del sys.modules[name]


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a plugin module under tmp_path (importable); returns its unique name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(source: str) -> str:
        name = f"fakeplug_{uuid.uuid4().hex[:8]}"
        header = "from draft_core import hookimpl\n"
        (tmp_path / f"{name}.py").write_text(header + textwrap.dedent(source))
        return name

    return make


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """Set the distributions discovery sees: installed(FakeDistribution(...), ...)."""

    def install(*dists: FakeDistribution) -> None:
        monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter(dists))

    return install


REWARDS = """
    class Scaled:
        def __init__(self, weight: float = 1.0, *, model: str = "tiny"):
            self.weight, self.model = weight, model

    def needs_path(path, mode="r"):
        return (path, mode)

    def anything(**kwargs):
        return kwargs

    @hookimpl
    def register_rewards(register):
        register("jpeg-compressibility", Scaled)
        register("aesthetic", needs_path)
        register("loose", anything)
"""

SAMPLERS = """
    @hookimpl
    def register_samplers(register):
        register("ddim", dict)

    @hookimpl
    def register_estimators(register):
        register("draft-k", dict)
"""


def test_discovers_and_attributes(make_module, installed):
    rewards, samplers = make_module(REWARDS), make_module(SAMPLERS)
    installed(
        FakeDistribution("draft-rewards-extra", "1.2.3", {"extra": rewards}),
        FakeDistribution("draft-diffusion", "0.1.0", {"draft_samplers": samplers}),
    )
    registry = load_registry(refresh=True)
    assert registry.names("reward") == ["aesthetic", "jpeg-compressibility", "loose"]
    assert registry.names("sampler") == ["ddim"]
    assert registry.names("estimator") == ["draft-k"]
    entry = registry.get("reward", "aesthetic")
    assert (entry.plugin, entry.distribution, entry.version) == ("extra", "draft-rewards-extra", "1.2.3")
    assert registry.get("sampler", "ddim").distribution == "draft-diffusion"
    assert registry.load_errors == []
    described = registry.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["samplers"] == [
        {
            "name": "ddim",
            "plugin": "draft_samplers",
            "distribution": "draft-diffusion",
            "version": "0.1.0",
            "arguments": [],
        }
    ]
    table = format_plugins(registry)
    assert "draft-rewards-extra==1.2.3" in table and "Load errors" not in table


def test_listing_shows_each_plugins_arguments_with_defaults(make_module, installed):
    installed(FakeDistribution("draft-rewards-extra", "1.2.3", {"extra": make_module(REWARDS)}))
    registry = load_registry(refresh=True)
    [scaled] = [r for r in registry.describe()["rewards"] if r["name"] == "jpeg-compressibility"]
    assert scaled["arguments"] == [
        {"name": "weight", "required": False, "default": 1.0, "type": "float"},
        {"name": "model", "required": False, "default": "tiny", "type": "str"},
    ]
    [row] = [line for line in format_plugins(registry).splitlines() if " jpeg-compressibility " in line]
    assert row.endswith("weight=1.0, model='tiny'")
    [row] = [line for line in format_plugins(registry).splitlines() if " aesthetic " in line]
    assert row.endswith("path (required), mode='r'")


def test_cached_until_refresh(make_module, installed):
    installed(FakeDistribution("a", "1", {"a": make_module(SAMPLERS)}))
    first = load_registry(refresh=True)
    assert load_registry() is first
    assert load_registry(refresh=True) is not first


def test_same_distribution_twice_on_path_loads_once(make_module, installed):
    module = make_module(SAMPLERS)
    installed(FakeDistribution("Draft_Extra", "1", {"x": module}), FakeDistribution("draft-extra", "1", {"x": module}))
    assert load_registry(refresh=True).names("sampler") == ["ddim"]


def test_failing_import_is_reported_and_others_load(make_module, installed):
    broken = make_module("import no_such_dependency_xyz\n")
    installed(
        FakeDistribution("draft-rewards-broken", "0.9", {"broken": broken}),
        FakeDistribution("draft-rewards-extra", "1.0", {"extra": make_module(REWARDS)}),
    )
    registry = load_registry(refresh=True)
    assert "jpeg-compressibility" in registry.names("reward")
    [error] = registry.load_errors
    assert (error.entry_point, error.distribution, error.version) == ("broken", "draft-rewards-broken", "0.9")
    assert error.error.startswith("ModuleNotFoundError: ")
    assert "no_such_dependency_xyz" in error.error
    assert registry.describe()["errors"][0]["distribution"] == "draft-rewards-broken"
    table = format_plugins(registry)
    assert "Load errors:" in table and "draft-rewards-broken==0.9" in table
    with pytest.raises(PluginError, match="failed to load.*draft plugins"):
        registry.get("reward", "nope")


def test_hook_that_raises_contributes_nothing(make_module, installed):
    half = make_module("""
        @hookimpl
        def register_rewards(register):
            register("first", dict)
            raise RuntimeError("boom")
    """)
    installed(FakeDistribution("half", "1", {"half": half}))
    registry = load_registry(refresh=True)
    assert registry.names("reward") == []
    assert registry.load_errors[0].error == "RuntimeError: boom"


@pytest.mark.parametrize("how", ["argument", "env"])
def test_strict_mode_reraises(make_module, installed, monkeypatch, how):
    installed(FakeDistribution("b", "1", {"b": make_module("raise ImportError('nope')\n")}))
    if how == "env":
        monkeypatch.setenv("DRAFT_STRICT_PLUGINS", "1")
    with pytest.raises(ImportError, match="nope"):
        load_registry(refresh=True, strict=True if how == "argument" else None)


def test_misspelt_hook_is_reported(make_module, installed):
    typo = make_module("""
        @hookimpl
        def register_reward(register):
            register("never", dict)
    """)
    installed(FakeDistribution("typo", "1", {"typo": typo}), FakeDistribution("ok", "1", {"ok": make_module(SAMPLERS)}))
    registry = load_registry(refresh=True)
    assert registry.names("sampler") == ["ddim"]
    [error] = registry.load_errors
    assert error.entry_point == "typo"
    assert "'register_reward'" in error.error and "Did you mean 'register_rewards'" in error.error
    with pytest.raises(PluginError, match="register_reward"):
        load_registry(refresh=True, strict=True)


def test_wrong_hook_argument_is_reported(make_module, installed):
    bad = make_module("""
        @hookimpl
        def register_rewards(reg):
            reg("x", dict)
    """)
    installed(FakeDistribution("bad", "1", {"bad": bad}))
    [error] = load_registry(refresh=True).load_errors
    assert error.error.startswith("PluginValidationError") and "\n" not in error.error


def test_duplicate_name_names_both_providers(make_module, installed):
    installed(
        FakeDistribution("draft-rewards-a", "1.0", {"a": make_module(REWARDS)}),
        FakeDistribution("draft-rewards-b", "2.0", {"b": make_module(REWARDS)}),
    )
    with pytest.raises(PluginError) as info:
        load_registry(refresh=True, strict=True)
    message = str(info.value)
    assert "reward 'jpeg-compressibility' is registered twice" in message
    assert "plugin 'a' from draft-rewards-a 1.0" in message
    assert "plugin 'b' from draft-rewards-b 2.0" in message


OTHER_DDIM = """
    @hookimpl
    def register_samplers(register):
        register("ddim", list)
        register("euler", list)
"""


def test_a_name_conflict_is_isolated_like_an_import_error(make_module, installed, capsys):
    """An outside plugin registering a built-in's name: the built-in keeps it (even when the outside
    distribution is found first), the plugin's other names still load, `draft plugins` reports it and
    only a run that names it is refused; everything else says so in one warning line."""
    installed(
        FakeDistribution("draft-samplers-extra", "3.0", {"extra": make_module(OTHER_DDIM)}),
        FakeDistribution("draft-diffusion", "0.1.0", {"draft_samplers": make_module(SAMPLERS)}),
    )
    registry = load_registry(refresh=True)
    assert registry.names("sampler") == ["ddim", "euler"]
    assert registry.get("sampler", "euler").distribution == "draft-samplers-extra"
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "sampler 'ddim'" in warning[0] and "draft plugins" in warning[0]
    with pytest.raises(PluginError) as info:
        registry.get("sampler", "ddim")
    message = str(info.value)
    assert "plugin 'draft_samplers' from draft-diffusion 0.1.0" in message
    assert "plugin 'extra' from draft-samplers-extra 3.0" in message and "DRAFT_PLUGINS" in message
    table = format_plugins(registry)
    assert "Name conflicts" in table and "Dropped: plugin 'extra' (draft-samplers-extra==3.0)" in table
    [conflict] = registry.describe()["conflicts"]
    assert (conflict["name"], conflict["kept"]["distribution"], conflict["dropped"]["plugin"]) == (
        "ddim",
        "draft-diffusion",
        "extra",
    )
    with pytest.raises(PluginError, match="registered twice"):  # today's strictness on request
        load_registry(refresh=True, strict=True)


def test_unknown_allow_list_names_are_warned_about(make_module, installed, monkeypatch, capsys):
    installed(
        FakeDistribution("draft-diffusion", "0.1.0", {"draft_samplers": make_module(SAMPLERS)}),
        FakeDistribution("draft-rewards-extra", "1", {"extra": make_module(REWARDS)}),
    )
    monkeypatch.setenv("DRAFT_PLUGINS", "extra,nonexistent")
    registry = load_registry(refresh=True)
    assert registry.unknown_allowed == ("nonexistent",)
    [warning] = capsys.readouterr().err.strip().splitlines()
    assert "DRAFT_PLUGINS" in warning and "'nonexistent'" in warning and "'extra'" not in warning
    assert "'nonexistent', which no installed distribution provides" in format_plugins(registry)
    monkeypatch.setenv("DRAFT_PLUGINS", "extra")
    load_registry()
    assert capsys.readouterr().err == ""


def test_allow_list(make_module, installed, monkeypatch):
    installed(
        FakeDistribution("draft-diffusion", "0.1.0", {"draft_samplers": make_module(SAMPLERS)}),
        FakeDistribution("draft-rewards-extra", "1", {"extra": make_module(REWARDS)}),
        FakeDistribution("draft-rewards-broken", "1", {"broken": make_module("1/0\n")}),
    )
    monkeypatch.setenv("DRAFT_PLUGINS", "extra")
    registry = load_registry(refresh=True)
    assert registry.names("sampler") == ["ddim"]  # built-ins always load
    assert "aesthetic" in registry.names("reward")
    assert registry.load_errors == []  # 'broken' was never imported
    monkeypatch.setenv("DRAFT_PLUGINS", "")
    registry = load_registry()  # a changed allow-list rebuilds the cached registry
    assert registry.names("reward") == [] and registry.names("sampler") == ["ddim"]
    with pytest.raises(PluginError, match="DRAFT_PLUGINS"):
        registry.get("reward", "aesthetic")


def test_register_plugin_programmatically():
    class Plugin:
        @hookspecs.hookimpl
        def register_rewards(self, register):
            register("const", lambda value=1.0: value)

    registry = Registry()
    registry.register_plugin(Plugin(), "local", distribution="mine", version="0.0.1")
    entry = registry.get("reward", "const")
    assert (entry.plugin, entry.distribution, entry.version) == ("local", "mine", "0.0.1")
    assert registry.build("reward", "const", value=3.0) == 3.0
    with pytest.raises(PluginError, match="registered twice"):
        registry.register_plugin(Plugin(), "again")
    assert registry.names("reward") == ["const"]


def test_unknown_name_lists_registered_and_closest(make_module, installed):
    installed(FakeDistribution("x", "1", {"x": make_module(REWARDS)}))
    registry = load_registry(refresh=True)
    with pytest.raises(PluginError) as info:
        registry.get("reward", "jpeg-compresibility")
    assert str(info.value) == (
        "unknown reward 'jpeg-compresibility'. Registered rewards: aesthetic,"
        " jpeg-compressibility, loose. Did you mean 'jpeg-compressibility'?"
    )
    with pytest.raises(PluginError, match="unknown plugin kind 'rewards'.*'reward'"):
        registry.get("rewards", "aesthetic")


def test_known_external_name_says_what_to_install():
    with pytest.raises(PluginError) as info:
        Registry().get("reward", "owlvit")
    assert (
        "'owlvit' is provided by the distribution draft-rewards-owlvit: pip install"
        " draft-rewards-owlvit (or ./plugins/draft-rewards-owlvit from a checkout)"
    ) in str(info.value)


def test_known_external_names_every_reward_distribution_under_plugins():
    """An unknown-name error can say what to install for every reward the checkout ships as a distribution."""
    import tomllib

    shipped = {}
    for pyproject in (Path(__file__).parents[1] / "plugins").glob("draft-rewards-*/pyproject.toml"):
        project = tomllib.loads(pyproject.read_text())["project"]
        for name in project["entry-points"]["draft"]:  # each registers the reward of its entry point's name
            shipped[name] = project["name"]
    assert len(shipped) >= 8 and KNOWN_EXTERNAL == shipped


def test_known_external_that_failed_to_load(make_module, installed):
    installed(FakeDistribution("draft-rewards-nsfw", "1", {"nsfw": make_module("1/0\n")}))
    with pytest.raises(PluginError, match="installed but failed to load: ZeroDivisionError"):
        load_registry(refresh=True).get("reward", "nsfw")


def test_check_kwargs(make_module, installed):
    installed(FakeDistribution("x", "1", {"x": make_module(REWARDS)}))
    registry = load_registry(refresh=True)
    registry.check_kwargs("reward", "jpeg-compressibility", {"weight": 2.0, "model": "big"})
    with pytest.raises(PluginError) as info:
        registry.check_kwargs("reward", "jpeg-compressibility", {"wieght": 2.0})
    assert str(info.value) == (
        "reward 'jpeg-compressibility' got unknown argument 'wieght' (did you mean"
        " 'weight'?). Accepted arguments: weight=1.0, model='tiny'."
    )
    with pytest.raises(PluginError, match="missing required argument 'path'.*path \\(required\\)"):
        registry.check_kwargs("reward", "aesthetic", {"mode": "w"})
    registry.check_kwargs("reward", "loose", {"whatever": 1})
    assert registry.build("reward", "aesthetic", path="p") == ("p", "r")
    assert registry.build("reward", "loose", name="n", kind="k") == {"name": "n", "kind": "k"}
    with pytest.raises(PluginError, match="unknown argument 'path'"):
        registry.build("reward", "jpeg-compressibility", path="p")


def test_no_plugins_table():
    assert format_plugins(Registry()) == "No plugins registered."


@pytest.mark.network_install
def test_pip_installed_plugin_is_discovered(tmp_path: Path):
    """Build and install a real distribution offline, then discover it in a fresh interpreter."""
    source = tmp_path / "src"
    shutil.copytree(DATA / "draft-test-plugin", source)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--no-cache-dir",
            "--quiet",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    script = textwrap.dedent("""
        import json, torch
        from draft_core.plugins import load_registry
        registry = load_registry()
        entry = registry.get("reward", "test-brightness")
        reward = registry.build("reward", "test-brightness", scale=2.0)
        print(json.dumps({
            "rewards": registry.names("reward"),
            "distribution": entry.distribution, "version": entry.version,
            "plugin": entry.plugin,
            "value": reward(torch.full((2, 3, 4, 4), 0.25), ["a", "b"]).tolist(),
        }))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("DRAFT_PLUGINS", "DRAFT_STRICT_PLUGINS")}
    env["PYTHONPATH"] = str(site)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert "test-brightness" in found["rewards"]
    assert (found["distribution"], found["version"], found["plugin"]) == (
        "draft-test-plugin",
        "0.3.1",
        "draft_test_plugin",
    )
    assert found["value"] == [0.5, 0.5]
