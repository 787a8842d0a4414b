"""Guards against reward hacking: ``train.stop_when`` rules over the validation metrics, and the
LoRA of the best validation step kept beside the last (``lora/best/``).

A reward being hacked shows in validation before it shows to the user: the held-out reward stops
following the training reward, or an independent judge (another reward on held-out prompts)
falls while the training reward still rises. Three rules read the ``metrics.jsonl`` rows, each
validation row in turn:

- ``falls``: ``metric`` fell at ``times`` validations in a row;
- ``gap``: the training reward's mean since the previous validation minus ``metric`` grew by
  more than ``by`` from the first such gap measured (the baseline absorbs a fixed offset between
  the training and the held-out prompts);
- ``drops``: ``metric`` is more than ``by`` below its first value (step 0's, before training).

The first rule that fires stops the run cleanly at that validation (its reason goes in the row as
``guard_stop``, in the log, the report and the model card). ``lora/best/`` holds the LoRA of the
validation with the highest ``best_metric`` among those no rule fired at (the row gets
``guard_best: true``). Everything is decided from the rows, so a resumed run replays them.
Validation is off by default, and so are the guards; with validation on and ``stop_when`` null,
one rule applies: the first validation metric (the held-out reward) falling three times in a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from draft_core.errors import ConfigError

RULES = ("falls", "gap", "drops")
DEFAULT_TIMES = 3
TRAIN_METRIC = "reward_mean"
EXAMPLE = (
    "e.g. [{rule: falls, metric: val/ink-coverage, times: 3}, {rule: gap, metric: val/ink-coverage, by: 0.1}, "
    "{rule: drops, metric: val/judge, by: 0.05}]"
)


@dataclass(frozen=True)
class Rule:
    """One ``train.stop_when`` entry."""

    kind: str  # one of RULES
    metric: str  # a validation metric, val/<label>
    times: int = DEFAULT_TIMES  # falls: validations in a row
    by: float = 0.0  # gap: growth over the first gap; drops: fall below the first value
    train_metric: str = TRAIN_METRIC  # gap: the per-step training metric

    def describe(self) -> str:
        if self.kind == "falls":
            return f"{self.metric} fell {self.times} validations in a row"
        if self.kind == "gap":
            return f"the gap {self.train_metric} - {self.metric} grew by more than {self.by:g} from its first value"
        return f"{self.metric} dropped more than {self.by:g} below its first value"


@dataclass(frozen=True)
class Verdict:
    """What the guards make of one metrics row."""

    stop: str | None = None  # the reason to stop, when a rule fired
    best: bool = False  # this validation is the best so far: keep its LoRA as lora/best/


@dataclass
class _Seen:
    values: dict[str, list[float]] = field(default_factory=dict)  # metric -> value at each validation
    train_since: list[float] = field(default_factory=list)  # training metric since the last validation
    first_gap: dict[str, float] = field(default_factory=dict)  # rule metric -> the first gap measured


class Guards:
    """The rules and the best-step choice of one run; ``observe`` every metrics row in order."""

    def __init__(self, rules: list[Rule], best_metric: str | None) -> None:
        self.rules = rules
        self.best_metric = best_metric
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.stopped: str | None = None  # the reason, once a rule fired
        self.stopped_step: int | None = None
        self._seen = _Seen()

    @property
    def active(self) -> bool:
        return bool(self.rules) or self.best_metric is not None

    def observe(self, row: Mapping[str, Any]) -> Verdict:
        """Read one metrics row; a row without validation metrics only feeds the gap rule."""
        seen = self._seen
        for rule in self.rules:
            value = row.get(rule.train_metric) if rule.kind == "gap" else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                seen.train_since.append(float(value))
                break
        scores = {k: float(v) for k, v in row.items() if k.startswith("val/") and isinstance(v, (int, float))}
        if not scores:
            return Verdict()
        for k, v in scores.items():
            seen.values.setdefault(k, []).append(v)
        train_mean = sum(seen.train_since) / len(seen.train_since) if seen.train_since else None
        seen.train_since = []
        reason = next((r for rule in self.rules if (r := self._check(rule, train_mean)) is not None), None)
        step = int(row.get("step", 0))
        best = False
        if reason is None and self.best_metric in scores:
            value = scores[self.best_metric]
            if self.best_value is None or value > self.best_value:
                self.best_value, self.best_step, best = value, step, True
        if reason is not None and self.stopped is None:
            self.stopped, self.stopped_step = f"step {step}: {reason}", step
        return Verdict(reason, best)

    def _check(self, rule: Rule, train_mean: float | None) -> str | None:
        values = self._seen.values.get(rule.metric, [])
        if not values:
            return None
        now = values[-1]
        if rule.kind == "falls":
            tail = values[-rule.times - 1 :]
            if len(tail) == rule.times + 1 and all(b < a for a, b in zip(tail, tail[1:])):
                trail = " -> ".join(f"{v:.4g}" for v in tail)
                return f"{rule.metric} fell {rule.times} validations in a row ({trail})"
            return None
        if rule.kind == "drops":
            if values[0] - now > rule.by:
                return f"{rule.metric} dropped to {now:.4g} from {values[0]:.4g} at the start (more than {rule.by:g})"
            return None
        if train_mean is None:  # a validation with no training step before it (step 0)
            return None
        gap = train_mean - now
        first = self._seen.first_gap.setdefault(rule.metric, gap)
        if gap - first > rule.by:
            return (
                f"the gap between {rule.train_metric} ({train_mean:.4g}) and {rule.metric} ({now:.4g}) grew to "
                f"{gap:.4g} from {first:.4g} (by more than {rule.by:g})"
            )
        return None

    def note(self, row: dict[str, Any]) -> Verdict:
        """``observe``, with the verdict noted in the row (``guard_stop``: the reason; ``guard_best``: true)."""
        verdict = self.observe(row)
        if verdict.stop:
            row["guard_stop"] = verdict.stop
        if verdict.best:
            row["guard_best"] = True
        return verdict

    def replay(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Observe the rows of a resumed run (metrics.jsonl, already cut back to its checkpoint)."""
        for row in rows:
            self.observe(row)


def validation_metrics(config: Any) -> list[str]:
    """The ``val/<label>`` metrics the config's validation logs, in order (empty without validation)."""
    v = config.train.validation
    if v.prompts is None:
        return []
    if not v.rewards:
        return [f"val/{config.reward.get('name') or 'reward'}"]
    labels = []
    for spec in v.rewards:
        if isinstance(spec, str):
            labels.append(spec)
        elif isinstance(spec, dict):
            labels.append(str(spec.get("label") or spec.get("name")))
    return [f"val/{label}" for label in labels]


def build_guards(config: Any) -> Guards:
    """``train.stop_when`` and ``train.best_metric`` checked against the validation metrics the config logs."""
    t = config.train
    metrics = validation_metrics(config)
    if not metrics:
        if t.stop_when:
            raise ConfigError(
                "config key 'train.stop_when' gives rules over validation metrics, but validation is off "
                "(train.validation.prompts is null); set train.validation.prompts (and its rewards), or remove train.stop_when."
            )
        return Guards([], None)
    specs = (
        t.stop_when if t.stop_when is not None else [{"rule": "falls", "metric": metrics[0], "times": DEFAULT_TIMES}]
    )
    rules = [_rule(spec, k, metrics) for k, spec in enumerate(specs)]
    best = t.best_metric
    if best == "auto":
        best = metrics[0]
    elif best is not None and best not in metrics:
        raise ConfigError(
            f"config key 'train.best_metric' is {best!r}, which validation does not log; give one of {', '.join(metrics)}, "
            f"auto (the first: {metrics[0]}) or null (no lora/best/)."
        )
    return Guards(rules, best)


def _rule(spec: Any, k: int, metrics: list[str]) -> Rule:
    key = f"train.stop_when[{k}]"
    if not isinstance(spec, dict) or spec.get("rule") not in RULES:
        raise ConfigError(
            f"config key '{key}' is {spec!r}; each rule is a mapping whose 'rule' is one of {', '.join(RULES)}, {EXAMPLE}."
        )
    kind = spec["rule"]
    allowed = {"rule", "metric", "times" if kind == "falls" else "by"} | ({"train_metric"} if kind == "gap" else set())
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(
            f"config key '{key}': a '{kind}' rule takes {', '.join(sorted(allowed))}, not {', '.join(unknown)}; {EXAMPLE}."
        )
    metric = spec.get("metric")
    if metric not in metrics:
        raise ConfigError(
            f"config key '{key}.metric' is {metric!r}; give a metric validation logs: {', '.join(metrics)} "
            f"(val/<label>, one per train.validation.rewards entry)."
        )
    if kind == "falls":
        times = spec.get("times", DEFAULT_TIMES)
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ConfigError(
                f"config key '{key}.times' must be a positive integer (validations in a row), got {times!r}."
            )
        return Rule(kind, metric, times=times)
    by = spec.get("by")
    if isinstance(by, bool) or not isinstance(by, (int, float)) or by < 0:
        raise ConfigError(f"config key '{key}.by' must be a number >= 0 (in the metric's units), got {by!r}.")
    train_metric = spec.get("train_metric", TRAIN_METRIC)
    if not isinstance(train_metric, str):
        raise ConfigError(
            f"config key '{key}.train_metric' must name a per-step metric (e.g. reward_mean), got {train_metric!r}."
        )
    return Rule(kind, metric, by=float(by), train_metric=train_metric)
