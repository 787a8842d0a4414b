"""The plugin contract the core enforces: reward inputs and outputs checked where the core calls a
reward, estimator outputs and checkpointed state, metrics rows and checkpoints that agree after any
failure, and the worked plugins of docs/plugins.md passing the conformance checklists."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch
import yaml
from test_faults import rows, train
from torch import nn

from draft_core import hookimpl
from draft_core.plugins import discovery, load_registry
from draft_core.plugins.registry import Registry
from draft_core.rewarding.contract import RewardContractError, checked_reward, unchecked
from draft_core.rewarding.weighted import WeightedReward
from draft_core.samplers.ddim import DDIMSampler
from draft_core.testing import RewardConformance
from draft_core.testing.estimators import EstimatorConformance
from draft_rewards.jpeg import jpeg_reconstruction_error

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]


def python_blocks(path: Path, heading: str) -> list[str]:
    """The ```python blocks of the section ``heading`` of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    assert heading in text, f"{path.name} has no section {heading!r}"
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def module_from(code: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(code, f"<{name}>", "exec"), module.__dict__)
    return module


def registered(module: types.ModuleType, kind: str):
    """The (name, factory) the plugin module registers for ``kind``, through a real registry."""
    registry = Registry()
    registry.register_plugin(module, module.__name__)
    [entry] = registry.entries(kind)
    return entry.name, entry.factory


DOCS = ROOT / "docs" / "plugins.md"
README_REWARD = registered(module_from(python_blocks(DOCS, "## Writing a reward plugin")[0], "readme_reward"), "reward")
DOCS_REWARD = registered(module_from(python_blocks(DOCS, "## A worked reward plugin")[0], "my_reward"), "reward")
DOCS_ESTIMATOR_MODULE = module_from(python_blocks(DOCS, "## A worked estimator plugin")[0], "my_estimator")
DOCS_ESTIMATOR = registered(DOCS_ESTIMATOR_MODULE, "estimator")


# -- the worked examples pass the checklists --------------------------------------------------


class TestReadmeReward(RewardConformance):
    def make_reward(self):
        return README_REWARD[1]()


class TestDocsReward(RewardConformance):
    def make_reward(self):
        return DOCS_REWARD[1](scale=2.0)


class TestDocsEstimator(EstimatorConformance):
    def make_estimator(self):
        return DOCS_ESTIMATOR[1](k=2)

    def make_unsupported_sampler(self):
        return DDIMSampler(steps=1)


def test_conformance_failures_show_their_values():
    """pytest rewrites the checklists' asserts, so a failure shows what was compared."""

    class NotAReward(RewardConformance):
        def make_reward(self):
            return object()

    with pytest.raises(AssertionError) as info:
        NotAReward().test_is_reward_protocol()
    assert "isinstance(<object object at" in str(info.value)


def test_the_estimator_checklist_has_no_deprecated_fixture(pytester):
    pytester.makepyfile(
        """
        from draft_core.testing.estimators import EstimatorConformance

        class TestFixtureOnly(EstimatorConformance):
            def make_estimator(self):
                raise AssertionError("not built")

            def test_setup_builds(self, setup):
                model, params = setup
                assert params
        """
    )
    result = pytester.runpytest_inprocess(
        "-k", "test_setup_builds", "-p", "no:cacheprovider", "-W", "error::pytest.PytestRemovedIn10Warning"
    )
    result.assert_outcomes(passed=1)


# -- the checked reward -------------------------------------------------------------------------


class Counting:
    def __init__(self, out):
        self.out, self.calls = out, 0

    def __call__(self, images, prompts=()):
        self.calls += 1
        return self.out(images)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda x: x.mean((2, 3)), "shape [2, 3]"),
        (lambda x: x.mean(), "0-dimensional"),
        (lambda x: (x.mean((1, 2, 3)) > 0.5).long(), "dtype torch.int64"),
        (lambda x: x.mean((1, 2, 3)).tolist(), "list"),
        (lambda x: torch.zeros(2, device="meta"), "on meta"),
    ],
    ids=["per-channel", "scalar", "integer", "list", "other-device"],
)
def test_a_reward_output_outside_the_contract_is_one_paragraph(make, named):
    reward = checked_reward(Counting(make), "reward 'odd' (plugin 'odd' from distribution odd-rewards 1.0)")
    with pytest.raises(RewardContractError) as info:
        reward(torch.rand(2, 3, 8, 8), ["a", "b"])
    message = str(info.value)
    assert message.startswith("reward 'odd' (plugin 'odd' from distribution odd-rewards 1.0) returned ")
    assert named in message and "[B] = [2]" in message and "\n" not in message


def test_bad_images_are_refused_before_the_reward_runs():
    inner = Counting(lambda x: x.mean((1, 2, 3)))
    reward = checked_reward(inner, "reward 'r'")
    for images in (torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 1, 8, 8), torch.rand(2, 3, 8, 8).to(torch.uint8)):
        with pytest.raises(RewardContractError, match="reward 'r'"):
            reward(images, ["a", "b"])
    with pytest.raises(RewardContractError, match="3 prompts for 2 images"):
        reward(torch.rand(2, 3, 8, 8), ["a", "b", "c"])
    assert inner.calls == 0
    assert reward(torch.rand(2, 3, 8, 8), ["a", "b"]).shape == (2,) and inner.calls == 1


def test_the_checked_reward_keeps_what_estimators_and_the_runner_use():
    class Net(nn.Module):
        differentiable = True

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 1)
            self.last_terms = {"a": torch.ones(2)}

        def forward(self, images, prompts=()):
            return self.fc(images.mean((2, 3))).squeeze(1)

    net = Net()
    reward = checked_reward(net, "reward 'net'")
    assert isinstance(reward, nn.Module) and unchecked(reward) is net and checked_reward(reward, "x") is reward
    assert list(reward.parameters()) == list(net.parameters())
    assert reward.last_terms is net.last_terms and reward.differentiable and reward.fc is net.fc
    assert reward.to(torch.float64) is reward and net.fc.weight.dtype == torch.float64
    plain = checked_reward(lambda x, p: x.mean((1, 2, 3)), "reward 'plain'")
    assert not isinstance(plain, nn.Module)
    # A plain function has every optional member, at RewardBase's defaults.
    assert dict(plain.last_terms) == {} and plain.differentiable and not plain.uses_prompts and plain.to("cpu") is plain


def test_each_term_of_a_weighted_sum_is_checked_under_its_own_name(no_model):
    from draft_core.config import load_config
    from draft_core.training.components import build_components

    components = build_components(
        load_config(overrides=["reward={weights: {jpeg-compressibility: 1, rotation-anticorrelation: 2}}"])
    )
    jpeg = components.reward.terms["jpeg-compressibility"][0]
    components.reward.terms["jpeg-compressibility"] = (lambda x, p: jpeg(x, p)[:, None], 1.0)
    components.sources[0] = (components.reward.terms["jpeg-compressibility"][0], components.sources[0][1])
    reward = components.checked_reward()
    with pytest.raises(RewardContractError) as info:
        reward(torch.rand(2, 3, 16, 16), ["a", "b"])
    assert str(info.value).startswith(
        "reward 'jpeg-compressibility' (plugin 'draft_rewards' from distribution draft-diffusion"
    )
    assert "shape [2, 1]" in str(info.value)
    assert isinstance(unchecked(reward), WeightedReward)


# -- training with plugins that break the contract ---------------------------------------------


class OffShape:
    """JPEG compressibility, except from call ``bad_from`` on (1-based; 0: never): a [B, 3] tensor
    (``shape: wide``) or the batch mean (``shape: scalar``)."""

    def __init__(self, bad_from: int = 1, shape: str = "wide") -> None:
        self.bad_from, self.shape, self.calls = bad_from, shape, 0

    def __call__(self, images, prompts):
        self.calls += 1
        r = -jpeg_reconstruction_error(images)
        if self.bad_from and self.calls >= self.bad_from:
            return r.mean() if self.shape == "scalar" else r[:, None].expand(-1, 3)
        return r


class BadState(DOCS_ESTIMATOR[1]):
    """The docs' estimator, but from call ``bad_at`` on its state holds a string."""

    def __init__(self, k: int = 1, bad_at: int = 0) -> None:
        super().__init__(k)
        self.bad_at = bad_at

    def state_dict(self) -> dict:
        state = super().state_dict()
        return {**state, "note": "a string"} if self.bad_at and self.calls >= self.bad_at else state


class ContractPlugin:
    @hookimpl
    def register_rewards(self, register):
        register("off-shape", OffShape)

    @hookimpl
    def register_estimators(self, register):
        register("bad-state", BadState)


@pytest.fixture
def contract(monkeypatch):
    """The installed plugins, plus the docs' worked estimator and this file's plugins."""
    monkeypatch.setattr(discovery, "_cache", None)  # restored afterwards
    registry = load_registry()
    registry.register_plugin(ContractPlugin(), "contract_plugin", distribution="draft-contract-test", version="9.9")
    registry.register_plugin(DOCS_ESTIMATOR_MODULE, "my_estimator", distribution="my-estimator", version="0.1")


def test_a_reward_of_the_wrong_shape_stops_training_before_any_update(tmp_path, contract, capsys):
    out = tmp_path / "run"
    assert train(out, "reward={name: off-shape}", "train.steps=2") == 2
    err = capsys.readouterr().err
    assert (
        "step 1: reward 'off-shape' (plugin 'contract_plugin' from distribution draft-contract-test 9.9) "
        "returned a tensor of shape [1, 3]"
    ) in err
    assert "[B] = [1]" in err and "before this step's update" in err and "Traceback" not in err
    assert not (out / "checkpoints").exists() and not (out / "lora").exists()


def test_a_scalar_reward_loses_no_metrics_row_and_the_run_resumes_contiguously(tmp_path, contract, capsys):
    out = tmp_path / "run"
    assert train(out, "reward={name: off-shape, shape: scalar, bad_from: 2}", "train.steps=3") == 2
    err = capsys.readouterr().err
    assert "step 2: reward 'off-shape'" in err and "0-dimensional tensor (a scalar)" in err
    assert "the state after step 1 (the last completed step) is checkpointed" in err
    assert [r["step"] for r in rows(out)] == [1]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000001"
    assert train(out, "reward.bad_from=0", resume=True) == 0  # the plugin is fixed
    assert [r["step"] for r in rows(out)] == [1, 2, 3]


def test_metrics_rows_and_checkpoints_agree_after_a_failure_past_the_update(tmp_path, monkeypatch):
    """A failure after step N's update but before its row: no checkpoint of step N either."""
    from test_runner import _trainer

    from draft_core.training.runner import Trainer

    step = Trainer.train_step

    def fails_after_updating_at_3(self):
        row = step(self)
        if self.step == 3:
            raise RuntimeError("disk full")
        return row

    monkeypatch.setattr(Trainer, "train_step", fails_after_updating_at_3)
    out = tmp_path / "run"
    trainer = _trainer(out, ["train.steps=4", "train.sample_every=0", "train.checkpoint_every=2"])
    with pytest.raises(RuntimeError, match="disk full"):
        trainer.train()
    assert [r["step"] for r in rows(out)] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000002"]


def test_an_estimator_plugin_is_named_checkpointed_with_plain_numbers_and_resumed(tmp_path, contract, capsys):
    out = tmp_path / "run"
    assert train(out, "estimator={name: bad-state, bad_at: 0}", "train.steps=2") == 0
    err = capsys.readouterr().err
    assert (
        "estimator bad-state(bad_at=0, k=1)" in err and " object at 0x" not in err
    )  # no __repr__ needed; k: its default
    # The plain int `calls` went through the checkpoint and comes back an int: counting goes on.
    assert train(out, "train.steps=3", resume=True) == 0
    assert [r["calls"] for r in rows(out)] == [1.0, 2.0, 3.0]
    # State a checkpoint cannot hold: named at the first save; the last good checkpoint and LoRA stay.
    assert train(out, "train.steps=4", "estimator.bad_at=4", resume=True) == 2
    err = capsys.readouterr().err
    assert "estimator 'bad-state' (plugin 'contract_plugin' from distribution draft-contract-test 9.9)" in err
    assert "'note' = 'a string' (str)" in err and "Traceback" not in err
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["latest", "step-000001", "step-000002", "step-000003"]  # and no half-written .step-000004.tmp
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000003"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert (out / "lora" / "pytorch_lora_weights.safetensors").exists()


# -- checked before anything is created -------------------------------------------------------


def _error(capsys, *argv) -> str:
    from draft_core.cli import main

    assert main(list(argv)) == 2
    return capsys.readouterr().err


def test_a_plugin_argument_of_the_wrong_type_is_a_config_error_before_the_run_folder(tmp_path, capsys, no_model):
    out = tmp_path / "run"
    err = _error(
        capsys,
        "train",
        "--preset",
        "quickstart",
        "--out",
        str(out),
        "--set",
        "reward.name=jpeg-compressibility",
        "--set",
        "reward.quality=abc",
    )
    assert "config key 'reward.quality' has the value 'abc', but it must be float" in err
    assert not out.exists()


def test_every_config_problem_is_reported_at_once(tmp_path, capsys, no_model):
    config = tmp_path / "two-typos.yaml"
    config.write_text("train: {stpes: 3, lr: 0.01}\nlora: {rnak: 2}\n")
    err = _error(capsys, "train", str(config), "--dry-run")
    assert "2 problems" in err and "'train.stpes'" in err and "'lora.rnak'" in err
    err = _error(
        capsys,
        "train",
        "--preset",
        "quickstart",
        "--dry-run",
        "--set",
        "estimator.nn=3",
        "--set",
        "sampler.guidance_scale=high",
        "--set",
        "reward.softness=soft",
    )
    assert "3 problems" in err and "'nn'" in err and "'sampler.guidance_scale'" in err and "'reward.softness'" in err


def test_dry_run_shows_the_arguments_left_at_their_defaults(capsys, no_model):
    from draft_core.cli import main

    assert (
        main(["train", "--preset", "quickstart", "--dry-run", "--set", "estimator={name: draft-k, k: 2, kl: 0.1}"]) == 0
    )
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)  # the resolved config holds them all: no comment block is left to show
    assert printed["sampler"]["eta"] == 0.0
    assert printed["estimator"] == {
        "name": "draft-k",
        "k": 2,
        "checkpoint": None,
        "k_range": None,
        "alignprop_range": None,
        "kl": {"beta": 0.1},
    }
    assert (printed["reward"]["threshold"], printed["reward"]["ink"]) == (0.5, "light")
    assert "# plugin arguments left at defaults" not in out


def test_a_name_conflict_leaves_the_rest_of_the_cli_working(tmp_path, monkeypatch, capsys):
    import importlib.metadata

    (tmp_path / "other_ddim.py").write_text(
        "from draft_core import hookimpl\n\n@hookimpl\ndef register_samplers(register):\n    register('ddim', dict)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    class Other:
        metadata = {"name": "draft-other-ddim"}
        version = "1.0"
        entry_points = [importlib.metadata.EntryPoint("other_ddim", "other_ddim", "draft")]

    real = list(importlib.metadata.distributions())
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter([Other(), *real]))
    monkeypatch.setattr(discovery, "_cache", None)
    from draft_core.cli import main

    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    assert "Name conflicts" in out and "draft-other-ddim==1.0" in out and err == ""
    discovery._cache = None
    assert main(["train", "--preset", "quickstart", "--dry-run", "--set", "sampler.name=ddpm"]) == 0
    [warning] = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("[draft] warning: 1 plugin name(s) registered twice (sampler 'ddim')")
    [error] = _error(capsys, "train", "--preset", "quickstart", "--dry-run").strip().splitlines()
    assert "sampler 'ddim' is registered twice" in error and "draft-other-ddim 1.0" in error
