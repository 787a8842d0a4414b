"""Guards against reward hacking (draft_core/training/guards.py, guarding.py): the stop_when rules on
metrics rows, their config checks, lora/best/, the digit judge, and a tiny run stopped by a rule,
then resumed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from draft_core import cli
from draft_core.config import load_config
from draft_core.errors import ConfigError
from draft_core.training.guards import Guards, Rule

VAL = "val/held"


def rows(values, train=None, key=VAL):
    """Metrics rows: a validation at steps 0, 10, 20, ... with ``values``; ``train``: the reward_mean of each step before it."""
    out = [{"step": 0, key: values[0]}]
    for i, v in enumerate(values[1:], start=1):
        out += [
            {"step": 10 * i - 1, "reward_mean": train[i] if train else 0.0},
            {"step": 10 * i, "reward_mean": train[i] if train else 0.0, key: v},
        ]
    return out


def verdicts(guards, metric_rows):
    return [(r["step"], v.stop, v.best) for r in metric_rows if (v := guards.observe(r)).stop or v.best]


def test_falls_fires_at_the_nth_fall_in_a_row_only():
    g = Guards([Rule("falls", VAL, times=2)], None)
    seen = verdicts(g, rows([0.5, 0.4, 0.45, 0.44, 0.43, 0.42]))
    assert [s for s, _, _ in seen] == [40, 50]  # 0.45 -> 0.44 -> 0.43: two falls in a row
    assert "fell 2 validations in a row (0.45 -> 0.44 -> 0.43)" in seen[0][1]
    assert g.stopped.startswith("step 40:")


def test_drops_compares_with_the_first_value():
    g = Guards([Rule("drops", VAL, by=0.1)], None)
    assert [s for s, _, _ in verdicts(g, rows([0.9, 0.85, 0.81, 0.79]))] == [30]


def test_gap_grows_from_the_first_gap_measured():
    # training reward rises 0.1 per validation, the held-out one 0.05: the gap grows by 0.05 each time
    g = Guards([Rule("gap", VAL, by=0.12)], None)
    seen = verdicts(g, rows([0.0, 0.05, 0.10, 0.15, 0.20], train=[None, 0.1, 0.2, 0.3, 0.4]))
    assert [s for s, _, _ in seen] == [40]  # gaps 0.05, 0.10, 0.15, 0.20: grown by 0.15 > 0.12 at step 40
    assert "grew to 0.2 from 0.05" in seen[0][1]


def test_best_is_the_highest_validation_no_rule_fired_at_and_replay_agrees():
    metric_rows = rows([0.2, 0.5, 0.4, 0.9]) + [{"step": 40, "val/judge": 0.0}]
    for row, judge in zip((r for r in metric_rows if VAL in r), (0.95, 0.96, 0.95, 0.5)):
        row["val/judge"] = judge
    g = Guards([Rule("drops", "val/judge", by=0.1)], VAL)
    seen = verdicts(g, metric_rows)
    assert [(s, best) for s, _, best in seen] == [(0, True), (10, True), (30, False), (40, False)]
    assert (g.best_step, g.best_value) == (10, 0.5)  # 0.9 at step 30 came with the judge's drop
    replayed = Guards([Rule("drops", "val/judge", by=0.1)], VAL)
    replayed.replay(metric_rows)
    assert (replayed.best_step, replayed.stopped) == (g.best_step, g.stopped)


TINY = ["model.name=tiny-random", "reward.name=jpeg-compressibility", "prompts.source=animals"]
VALIDATION = (
    "train.validation={prompts: [a dog], rewards: [jpeg-compressibility, {name: jpeg-incompressibility, label: inc}]}"
)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.stop_when=[{rule: falls, metric: val/x}]"], "validation is off"),
        ([VALIDATION, "train.stop_when=[{rule: falls, metric: val/judge}]"], "val/jpeg-compressibility, val/inc"),
        ([VALIDATION, "train.stop_when=[{rule: rises, metric: val/inc}]"], "one of falls, gap, drops"),
        (
            [VALIDATION, "train.stop_when=[{rule: drops, metric: val/inc, by: -1}]"],
            "'train.stop_when[0].by' must be a number >= 0",
        ),
        (
            [VALIDATION, "train.stop_when=[{rule: falls, metric: val/inc, by: 1}]"],
            "a 'falls' rule takes metric, rule, times, not by",
        ),
        (
            [VALIDATION, "train.stop_when=[{rule: falls, metric: val/inc, times: 0}]"],
            "'train.stop_when[0].times' must be a positive",
        ),
        ([VALIDATION, "train.best_metric=val/nope"], "train.best_metric' is 'val/nope'"),
    ],
)
def test_bad_rules_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=None) as exc:
        load_config(None, TINY + overrides)
    assert message in str(exc.value)


def test_the_default_rule_and_best_metric_with_validation_on():
    from draft_core.training.guards import build_guards

    g = build_guards(load_config(None, TINY + [VALIDATION]))
    assert (
        g.rules == [Rule("falls", "val/jpeg-compressibility", times=3)] and g.best_metric == "val/jpeg-compressibility"
    )
    off = build_guards(load_config(None, TINY))
    assert off.rules == [] and off.best_metric is None and not off.active


def test_the_judge_reads_the_digit_each_prompt_asks_for():
    from draft_rewards.digits import DigitClassifier, prompted_digit

    assert [prompted_digit(p) for p in ("a handwritten digit three", "the number 7", "Nine, not one")] == [3, 7, 1]
    with pytest.raises(ValueError, match="names none"):
        prompted_digit("a cat")
    images = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    prompts = ["a handwritten digit three", "a handwritten digit eight", "a handwritten digit zero"]
    judge = DigitClassifier(output="prob")(images, prompts)
    want = torch.stack([DigitClassifier(target=t)(images[i : i + 1]).exp()[0] for i, t in enumerate((3, 8, 0))])
    torch.testing.assert_close(judge, want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        DigitClassifier()(images, prompts[:2])
    with pytest.raises(ValueError, match="'log-prob' or 'prob'"):
        DigitClassifier(output="p")


RUN = TINY + [
    "sampler.steps=2",
    "estimator={name: draft-k, k: 1}",
    "train.batch_size=1",
    "train.lr=0.01",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat]",
    "lora.rank=2",
    "train.steps=3",
    "train.checkpoint_every=2",
    "train.sample_every=0",
    "train.validation={prompts: [a dog], every: 1, n_per_prompt: 1, rewards: [jpeg-compressibility, jpeg-incompressibility]}",
    # The two are each other's negatives: once the LoRA changes the sample at all, one of them drops.
    "train.stop_when=[{rule: drops, metric: val/jpeg-compressibility, by: 0}, {rule: drops, metric: val/jpeg-incompressibility, by: 0}]",
]


def _sets(overrides):
    return sum((["--set", o] for o in overrides), [])


def test_a_rule_stops_the_run_cleanly_and_a_resume_goes_on_only_with_other_rules(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--preset", "quickstart", "--out", str(run), "--no-progress", *_sets(RUN)]) == 0
    err = capsys.readouterr().err
    assert "train.stop_when: val/jpeg-" in err and "dropped to" in err
    metric_rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metric_rows] == [0, 1]  # stopped after step 1 of 3
    assert metric_rows[0]["guard_best"] is True and "dropped to" in metric_rows[1]["guard_stop"]
    assert (run / "checkpoints" / "step-000001").is_dir()  # the stop's checkpoint, to resume from
    # lora/ is step 1's LoRA, lora/best/ step 0's (no update yet: every lora_B is zero)
    best = load_file(run / "lora" / "best" / "pytorch_lora_weights.safetensors")
    last = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    assert best.keys() == last.keys()
    assert all(not v.any() for k, v in best.items() if "lora_B" in k) and any(
        v.any() for k, v in last.items() if "lora_B" in k
    )
    card = (run / "lora" / "README.md").read_text()
    assert "stopped_by | train.stop_when at step 1: val/jpeg-" in card and "best_validation_step | 0" in card
    assert (
        "best_validation_step | 0" in (run / "lora" / "best" / "README.md").read_text()
    )  # its own step, not the previous best's
    assert "stopped by train.stop_when" in (run / "report.html").read_text()

    # The same rules stop it again: a clear error. Other rules (none) train on to step 3.
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "--set train.stop_when=[]" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(run), "--no-progress", "--set", "train.stop_when=[]"]) == 0
    metric_rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metric_rows] == [0, 1, 2, 3]
    assert (run / "lora" / "best" / "pytorch_lora_weights.safetensors").is_file()  # kept through the new checkpoints
