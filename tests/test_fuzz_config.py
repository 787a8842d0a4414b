"""Fuzz wall: config files with out-of-range numbers, wrong types and duplicated keys against
`draft train CONFIG --dry-run`, in-process. A config is accepted exactly when every value is in range
(the oracle below states the ranges independently of the code), else refused with one paragraph."""

from __future__ import annotations

import math

import pytest
import yaml
from fuzz_support import TALLY, examples, judge, report, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module", autouse=True)
def tally():
    TALLY.clear()
    yield
    print("\n" + report("config"))
    assert TALLY["tracebacks"] == 0 and TALLY["silent"] == 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# (section, key) -> whether a value is accepted; tiny-random's scheduler has 1000 training timesteps.
RANGES = {
    ("train", "weight_decay"): lambda v: _number(v) and v >= 0,
    ("train", "seed"): lambda v: _int(v) and 0 <= v < 2**64,
    ("train", "lr"): lambda v: _number(v) and v > 0,
    ("train", "steps"): lambda v: _int(v) and v >= 1,
    ("train", "grad_clip"): lambda v: v is None or (_number(v) and v > 0),
    ("lora", "alpha"): lambda v: v is None or (_number(v) and v > 0),
    ("lora", "rank"): lambda v: _int(v) and v >= 1,
    ("sampler", "steps"): lambda v: _int(v) and 1 <= v <= 1000,
    ("sampler", "eta"): lambda v: _number(v) and 0 <= v <= 1,
    ("sampler", "guidance_scale"): lambda v: _number(v) and v >= 0,
}
edge_values = st.sampled_from(
    [
        0,
        1,
        -1,
        2,
        1000,
        1001,
        5000,
        2**63,
        2**64 - 1,
        2**64,
        -(2**63),
        0.0,
        -0.0,
        0.5,
        -1e-9,
        1e-300,
        math.inf,
        -math.inf,
        math.nan,
        True,
        False,
        None,
        "7",
        "",
        [1],
        {"a": 1},
    ]
)
values = st.one_of(edge_values, st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True))


def _yaml(sections: dict, duplicate: str | None) -> str:
    text = yaml.safe_dump(sections, sort_keys=False)
    if duplicate is not None:  # the same section again at the end: YAML alone would keep this one silently
        text += yaml.safe_dump({duplicate: sections.get(duplicate) or {"seed": 1}}, sort_keys=False)
    return text


@settings(
    max_examples=examples(80),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    changes=st.dictionaries(st.sampled_from(sorted(RANGES)), values, min_size=1, max_size=3),
    duplicate=st.one_of(st.none(), st.sampled_from(["train", "lora", "model"])),
)
def test_config_values_are_range_checked_and_duplicates_refused(tmp_path_factory, changes, duplicate):
    sections: dict = {
        "model": {"name": "tiny-random"},
        "lora": {"rank": 2},
        "sampler": {"name": "ddim", "steps": 2},
        "train": {"steps": 2},
    }
    for (section, key), value in changes.items():
        sections.setdefault(section, {})[key] = value
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(_yaml(sections, duplicate))
    bad = duplicate is not None or not all(RANGES[k](v) for k, v in changes.items())
    outcome = run_cli(["train", str(path), "--dry-run"])
    judge(outcome, bad, f"{changes} duplicate={duplicate}", lambda: _resolved_as_given(outcome.out, changes))
    if duplicate is not None:
        assert f"'{duplicate}' appears twice" in outcome.err and "line" in outcome.err


def _resolved_as_given(out: str, changes: dict) -> None:
    resolved = yaml.safe_load(out.split("\n# ")[0])
    for (section, key), value in changes.items():
        assert resolved[section][key] == value, (section, key, resolved[section][key], value)


def test_duplicated_key_names_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 3\n  lr: 0.001\nmodel:\n  name: tiny-random\ntrain:\n  steps: 5\n")
    outcome = run_cli(["train", str(path), "--dry-run"])
    assert outcome.code == 2 and "'train' appears twice" in outcome.err and "line 1 and at line 6" in outcome.err
    nested = tmp_path / "n.yaml"
    nested.write_text("train:\n  steps: 3\n  steps: 4\n")
    outcome = run_cli(["train", str(nested), "--dry-run"])
    assert outcome.code == 2 and "'steps' appears twice" in outcome.err and "line 2 and at line 3" in outcome.err


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("train.weight_decay=-1", "'train.weight_decay' must be >= 0"),
        ("train.seed=18446744073709551616", "'train.seed' must be an integer in [0, 2**64)"),
        ("sampler.steps=5000", "more than the 1000 timesteps"),
        ("lora.alpha=0", "'lora.alpha' must be > 0"),
    ],
)
def test_the_issues_config_holes_are_refused_at_config_time(setting, expected):
    outcome = run_cli(["train", "--preset", "quickstart", "--set", setting, "--dry-run"])
    assert outcome.code == 2 and expected in outcome.err and outcome.trace is None, outcome.err


def test_sampler_steps_follow_the_models_own_schedule(tmp_path):
    """A folder whose scheduler trained on 100 timesteps takes at most 100 sampler steps."""
    import json

    from draft_core.config.ranges import train_timesteps
    from draft_core.models.loading import EMBEDDED, embedded_scheduler_config

    folder = tmp_path / "m"
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"num_train_timesteps": 100}))
    assert train_timesteps(str(folder)) == 100
    # The embedded models' scheduler configs, as known without building them, are the built models' own.
    for name in ("digits", "tiny-random-sdxl"):  # read from its weights folder; a constant of its module
        assert embedded_scheduler_config(name) == dict(EMBEDDED[name]().scheduler_config)
