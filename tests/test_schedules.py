"""Learning-rate schedules against diffusers' get_scheduler, step by step, and their combination with
the paper's sqrt decay; the weight average against its formula."""

from __future__ import annotations

import pytest
import torch
from diffusers.optimization import get_scheduler

from draft_core.config import load_config
from draft_core.errors import ConfigError
from draft_core.training.ema import WeightsEma
from draft_core.training.schedules import build_lr_scheduler, lr_factor


def _rates(scheduler, optimizer, n: int) -> list[list[float]]:
    """The learning rate of every parameter group before each of n optimiser steps."""
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def _optimizer(lr: float) -> torch.optim.Optimizer:
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    return torch.optim.AdamW(
        [{"params": [a]}, {"params": [b], "lr": lr * 50}], lr=lr
    )  # a group with its own multiplier


@pytest.mark.parametrize(
    "schedule,warmup", [("constant", 0), ("constant", 3), ("linear", 3), ("cosine", 0), ("cosine", 4)]
)
def test_schedules_match_diffusers_get_scheduler(schedule, warmup):
    steps = 12
    train = load_config(
        None, [f"train.lr_schedule={schedule}", f"train.lr_warmup_steps={warmup}", f"train.steps={steps}"]
    ).train
    ours_opt, ref_opt = _optimizer(1e-3), _optimizer(1e-3)
    ours = build_lr_scheduler(ours_opt, train)
    name = "constant_with_warmup" if schedule == "constant" and warmup else schedule
    ref = get_scheduler(name, ref_opt, num_warmup_steps=warmup, num_training_steps=steps)
    got, want = _rates(ours, ours_opt, steps + 2), _rates(ref, ref_opt, steps + 2)
    assert got == want  # the same arithmetic, so the same floats
    if schedule != "constant":
        assert want[warmup][0] == pytest.approx(1e-3) and want[steps][0] == 0.0  # it really warms up and decays
    if warmup:
        assert want[0][0] == 0.0


def test_sqrt_decay_combines_with_a_warmup_and_not_with_another_decay():
    train = load_config(None, ["train.lr_decay=sqrt", "train.lr_warmup_steps=10", "train.steps=500"]).train
    opt = _optimizer(1.0)
    rates = [r[0] for r in _rates(build_lr_scheduler(opt, train), opt, 400)]
    sqrt = lr_factor("sqrt")
    assert (
        rates[5] == pytest.approx(0.5) and rates[50] == 1.0 and rates[399] == pytest.approx(sqrt(399))
    )  # warm-up x decay
    with pytest.raises(ConfigError, match="lr_decay is 'sqrt'.*lr_schedule is 'cosine'"):
        load_config(None, ["train.lr_decay=sqrt", "train.lr_schedule=cosine"])
    with pytest.raises(ConfigError, match="lr_warmup_steps"):
        load_config(None, ["train.lr_warmup_steps=-1"])
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        load_config(None, ["train.lr_schedule=exponential"])


def test_weight_average_follows_its_formula_and_reloads_exactly():
    """shadow <- d·shadow + (1 - d)·weights, d = min(decay, n / (9 + n)) at update n >= 2 (diffusers' warm-up), 0 at n = 1."""
    torch.manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64)),
        torch.nn.Parameter(torch.randn(4, dtype=torch.float64)),
    ]
    ema = WeightsEma(params, 0.9)
    shadow = [p.detach().clone() for p in params]
    for n in range(1, 30):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p))
        ema.update()
        d = (
            min(0.9, (1 + (n - 1)) / (10 + (n - 1))) if n > 1 else 0.0
        )  # diffusers' warm-up: no averaging at the first update
        shadow = [d * s + (1 - d) * p.detach() for s, p in zip(shadow, params)]
    for s, e in zip(shadow, ema.average.shadow_params):
        torch.testing.assert_close(e, s, rtol=1e-12, atol=1e-12)  # float64: only summation order differs
    # Swapped in, the weights are the average; afterwards they are the weights again, bit for bit.
    before = [p.detach().clone() for p in params]
    with ema.applied():
        assert all(torch.equal(p, s) for p, s in zip(params, ema.average.shadow_params))
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    # Through a checkpoint's tensors, into a fresh average: the same state, and the same next update.
    extra = {"other": torch.zeros(1), **ema.state_dict()}
    again = WeightsEma(params, 0.9)
    again.load_state_dict(extra)
    assert list(extra) == ["other"]  # it took its keys and left the estimator's
    ema.update(), again.update()
    assert all(torch.equal(a, b) for a, b in zip(ema.average.shadow_params, again.average.shadow_params))
    assert again.average.optimization_step == ema.average.optimization_step == 30
    off = WeightsEma(params, None)
    assert off.state_dict() == {} and off.average is None
    off.update()  # no average: nothing happens
