"""draft plan: the tracer's tally, the meta-device step against the same step on real tensors, budgets."""

from __future__ import annotations

import json

import pytest
import torch

from draft_core.config import load_config
from draft_core.errors import ConfigError
from draft_core.planning.architectures import PlanError
from draft_core.planning.budget import parse_bytes, smallest_card
from draft_core.planning.meta import MetaValues, cpu_attention_flops, device_attention, elide_repeats
from draft_core.planning.step import measure_step, plan_step
from draft_core.planning.tracer import MemoryTracer

MiB = 2**20
TINY = [
    "model.name=tiny-random",
    "sampler.steps=2",
    "train.batch_size=1",
    "lora.rank=2",
    "reward.name=jpeg-compressibility",
    "prompts.items=[a cat]",
]
DIGITS = [
    "model.name=digits",
    "sampler.steps=3",
    "train.batch_size=2",
    "lora.rank=2",
    "reward.name=digit-classifier",
    "reward.target=3",
    "prompts.source=digits",
]


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


# -- the tracer ---------------------------------------------------------------------------------


def test_tally_is_the_bytes_of_live_tensors_at_each_point():
    w = torch.ones(64, 64)  # allocated before: counted only once registered
    with MemoryTracer() as tr:
        tr.register([w], "weights")
        assert tr.live("cpu") == nbytes(w) == 64 * 64 * 4
        a = torch.randn(128, 32)
        b = a * 2
        view = b[:, :16].t()  # a view: no new storage
        assert tr.live("cpu") == nbytes(w, a, b)
        c = torch.empty(10, dtype=torch.float16)
        assert tr.live("cpu") == nbytes(w, a, b, c)
        del a
        assert tr.live("cpu") == nbytes(w, b, c)
        b.add_(1)  # in place: no new storage
        del b
        assert tr.live("cpu") == nbytes(w, view, c)  # the view keeps b's storage alive
        del view
        peak_before_drop = nbytes(w, c) + 2 * 128 * 32 * 4
        d = torch.zeros(1000)
        del d, c
        assert tr.live("cpu") == nbytes(w)
    peak = tr.peak("cpu")
    assert peak.total == peak_before_drop
    assert peak.by_category == {"weights": nbytes(w), "activations": peak_before_drop - nbytes(w)}


def test_steady_state_counts_what_a_step_keeps_from_its_start():
    """A tensor created late in a step and kept (AdamW's state on the first step) is present
    throughout every later step: the steady-state peak counts it from the start."""
    with MemoryTracer() as tr:
        big = torch.zeros(1000)  # 4000 B, freed within the step
        del big
        kept = torch.zeros(500)  # 2000 B, created after the peak and kept
        tr.transient("cpu", 300)  # an elided call's working memory
    assert tr.peak("cpu").total == 4000
    tr.relabel([kept], "optimizer state")
    steady = tr.peak("cpu", steady=True)
    assert steady.total == 6000 and steady.by_category == {"activations": 4000, "optimizer state": 2000}
    assert kept.numel() == 500


def test_flops_are_torch_flop_counters():
    from torch.utils.flop_counter import FlopCounterMode

    conv, proj = torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 24)
    x = torch.randn(2, 3, 10, 10, requires_grad=True)

    def step():
        h = proj(conv(x).flatten(2).transpose(1, 2))  # [2, 64, 24]
        q, k, v = h.unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)  # each [2, 2, 64, 4]
        torch.nn.functional.scaled_dot_product_attention(q, k, v).square().mean().backward()

    with FlopCounterMode(display=False, custom_mapping=cpu_attention_flops()) as counter:
        step()
    with MemoryTracer(cpu_attention_flops()) as tr:
        step()
    assert tr.flops == counter.get_total_flops() > 0


# -- running on the meta device -----------------------------------------------------------------


def test_meta_values_stand_in_for_reads():
    x = torch.empty(4, device="meta")
    with MetaValues():
        assert bool(torch.isfinite(x).all()) is True
        assert bool((x < 0).any()) is False  # guards such as "any negative?" pass
        assert 0 <= x.min().item() <= 1  # image range checks pass
        assert torch.zeros(3, dtype=torch.int64, device="meta").sum().item() == 0


@pytest.mark.parametrize("requires_grad", [False, True])
def test_meta_attention_takes_the_cpu_kernel_and_its_memory(requires_grad):
    def run(device):
        q = torch.randn(2, 4, 256, 16, device=device, requires_grad=requires_grad)
        with MemoryTracer(cpu_attention_flops()) as tr:
            out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
            if requires_grad:
                out.sum().backward()
        return tr.peak(str(q.device)).total, tr.flops

    with device_attention("cpu"):
        meta = run("meta")
    assert meta == run("cpu")
    # without the substitution, meta takes the math path and holds the 256 x 256 attention matrix
    assert run("meta")[0] > meta[0] + 2 * 4 * 256 * 256 * 4 - 1


def test_elided_repeats_cost_what_the_calls_cost():
    from draft_core.models.tiny import build_tiny_random

    model = build_tiny_random().to(device="meta")
    x, emb = torch.empty(2, 4, 8, 8, device="meta"), torch.empty(2, 77, 32, device="meta")

    def run(elide):
        with torch.no_grad(), MetaValues(), MemoryTracer() as tr:
            with elide_repeats(model.unet, tr, "meta") if elide else torch.enable_grad():
                with torch.no_grad():
                    outs = [model.unet(x, t, encoder_hidden_states=emb).sample for t in (900, 100)]
        assert [o.shape for o in outs] == [x.shape] * 2
        return tr.peak("meta").total, tr.flops

    assert run(True) == run(False)
    assert "forward" not in vars(model.unet)  # the class's method again


def test_architectures_are_the_published_ones_without_weights():
    from draft_core.planning.architectures import meta_model
    from draft_rewards import ClipScore, HPSv2, PickScore

    model = meta_model("CompVis/stable-diffusion-v1-4", torch.bfloat16)
    assert sum(p.numel() for p in model.unet.parameters()) == 859_520_964  # SD 1.4's UNet
    assert model.image_size == (512, 512) and model.unet.device.type == "meta"
    for reward, params in ((HPSv2(), 986_109_441), (PickScore(), 986_109_441), (ClipScore(), 427_616_513)):
        with torch.device("meta"):
            net = reward.architecture()  # ViT-H-14 (open_clip; CLIP-H in transformers), ViT-L/14
        assert sum(p.numel() for p in net.parameters()) == params


def test_unknown_model_is_a_plan_error():
    from draft_core.planning.architectures import meta_model

    with pytest.raises(
        PlanError, match="cannot read the architecture of model 'nobody/nothing'.*local diffusers folder"
    ):
        meta_model("nobody/nothing", torch.float32)


# -- predictions against the same step on real tensors ---------------------------------------------

CASES = {
    "tiny-random draft-k": (TINY, ["estimator.name=draft-k", "estimator.k=1"]),
    "tiny-random draft": (TINY, ["estimator.name=draft"]),
    "tiny-random draft-lv": (TINY, ["estimator.name=draft-lv", "estimator.n=1"]),
    "tiny-random refl": (TINY, ["estimator.name=refl", "estimator.m=2"]),
    "digits dpg": (DIGITS, ["estimator.name=dpg", "estimator.states=1"]),
}
SLOW_CASES = {
    "tiny-random dpg": (TINY[:-2] + ["reward.name=digit-classifier", "reward.target=3"], ["estimator.name=dpg"]),
    "digits draft-k": (DIGITS, ["estimator.name=draft-k", "estimator.k=2"]),
    "digits draft": (DIGITS, ["estimator.name=draft"]),
    "digits draft-lv": (DIGITS, ["estimator.name=draft-lv", "estimator.n=2"]),
    "digits refl": (DIGITS, ["estimator.name=refl", "estimator.m=3"]),
    "tiny-random draft-lv with kl": (TINY, ["estimator.name=draft-lv", "estimator.n=1", "estimator.kl=0.1"]),
    "tiny-random ddpm, grad_accum, learned sampling": (
        TINY,
        [
            "sampler.name=ddpm",
            "estimator.name=draft-k",
            "estimator.k=2",
            "train.grad_accum=2",
            "learn.guidance=true",
            "learn.negative_prompt=true",
        ],
    ),
}


def _check_prediction(model_sets, estimator_sets):
    config = load_config(None, model_sets + estimator_sets)
    predicted = plan_step(config, "cpu")
    measured = measure_step(config, "cpu")
    assert abs(predicted.peak / measured.peak - 1) < 0.10, (predicted.breakdown, measured.breakdown)
    for category in ("base weights", "LoRA", "reward weights"):
        assert predicted.breakdown[category] == measured.breakdown[category]
    # AdamW keeps 2 fp32 tensors per LoRA parameter on the device (and a step count, on the CPU)
    assert predicted.breakdown["optimizer state"] == 2 * predicted.breakdown["LoRA"]
    assert measured.breakdown["optimizer state"] == pytest.approx(2 * measured.breakdown["LoRA"], rel=0.01)
    assert abs(predicted.flops / measured.flops - 1) < 0.01
    assert predicted.sampling_flops > 0 and predicted.cost_ratio > 1


@pytest.mark.parametrize("case", list(CASES))
def test_prediction_matches_the_real_step(case):
    _check_prediction(*CASES[case])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_prediction_matches_the_real_step_more(case):
    _check_prediction(*SLOW_CASES[case])


# -- budgets and fitting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected", [("24GiB", 24 * 2**30), ("80GB", 80 * 10**9), ("1.5 MiB", 3 * 2**19), (4096, 4096), ("4096", 4096)]
)
def test_budget_sizes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["24G", "lots", "-1GiB", 0, "'1.5'", "1.5", "true"])
def test_bad_budget_is_a_config_error_naming_it(text):
    expected = "not a memory size.*GiB" if text not in ("1.5", "true") else "must be str or int or null"
    with pytest.raises(ConfigError, match=f"'train.memory_budget' (is|has the value) .*{expected}"):
        load_config(None, [f"train.memory_budget={text}"])


def test_smallest_card():
    assert smallest_card(23 * 2**30) == 24 and smallest_card(41 * 2**30) == 48 and smallest_card(81 * 2**30) is None


def test_candidates_propose_checkpointing_only_where_it_is_off():
    from draft_core.planning import fitting

    config = load_config(
        None,
        TINY
        + [
            "estimator.name=draft",
            "train.batch_size=4",
            "train.checkpoint_decode=true",
            "train.checkpoint_reward=true",
            "train.checkpoint_denoiser=blocks",
        ],
    )
    labels = [p.label for p in fitting.candidates(config)]
    assert not any("checkpoint the" in label and "UNet" not in label for label in labels)  # on already
    assert "micro-batches of 1 x 4 (4 samples per update, as now)" in labels
    assert "DRaFT-K, K=1 (instead of full DRaFT)" in labels

    config = load_config(
        None,
        TINY
        + [
            "estimator.name=draft",
            "train.batch_size=4",
            "train.checkpoint_decode=false",
            "train.checkpoint_reward=false",
        ],
    )
    found = {p.label: p for p in fitting.candidates(config)}
    both = found["checkpoint the VAE decode and the reward model"]
    assert both.overrides == ["train.checkpoint_decode=true", "train.checkpoint_reward=true"]
    assert both.kind == fitting.KINDS[0]


def test_a_budget_that_a_change_meets_lists_it_first():
    from draft_core.planning import fitting
    from draft_core.planning.fitting import propose

    config = load_config(None, TINY + ["estimator.name=draft-lv", "estimator.n=1", "train.batch_size=2"])
    plan = plan_step(config, "cpu")
    proposals = propose(config, plan.peak - 1, "cpu")
    found = {tuple(p.overrides) for p in proposals}
    assert {("train.batch_size=1", "train.grad_accum=2"), ("estimator.n=0",)} <= found
    assert ("train.checkpoint_denoiser=blocks",) in found and ("model.quantize=int8",) in found  # issue 21's levers
    assert proposals[0].fits(plan.peak - 1)
    fit_kinds = [fitting.KINDS.index(p.kind) for p in proposals if p.fits(plan.peak - 1)]
    assert fit_kinds == sorted(fit_kinds)  # the same result first, then ... another estimator last
    micro = next(p for p in proposals if p.overrides[0] == "train.batch_size=1")
    # the same samples per update, in two micro-steps: about the same FLOPs, fewer activations at the
    # peak (not half: DRaFT-LV runs the sample's and the copies' backward passes one at a time, so
    # its peak also holds what does not scale with the batch)
    assert micro.peak < plan.peak and micro.trace.flops == pytest.approx(plan.flops, rel=0.02)
    assert micro.trace.breakdown["activations"] < 0.95 * plan.breakdown["activations"]


def test_a_budget_nothing_meets_is_a_clear_error():
    from draft_core.planning.fitting import check_budget

    config = load_config(None, TINY + ["estimator.name=draft-lv", "estimator.n=1"])
    with pytest.raises(
        PlanError,
        match=r"predicts a peak of .* over the memory budget of 1\.0 MiB\. No change draft "
        r"knows fits it: the lowest predicted peak is .*, with .*DRaFT-LV, n=0 "
        r".*--set estimator.n=0.*--no-plan-check",
    ):
        check_budget(config, "cpu", budget=MiB)


# -- the command line ------------------------------------------------------------------------------


def test_plan_command_json(capsys):
    from draft_core.cli import main

    assert (
        main(
            [
                "plan",
                "--set",
                "model.name=tiny-random",
                "--set",
                "sampler.steps=2",
                "--preset",
                "quickstart",
                "--set",
                "reward.name=jpeg-compressibility",
                "--device-type",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["device_type"] == "cpu" and out["peak_bytes"] == sum(out["breakdown_bytes"].values())
    assert out["cost_ratio"] > 1 and out["fits"] is None


def test_plan_command_over_budget_exits_2_with_the_proposal(capsys):
    from draft_core.cli import main

    assert (
        main(
            [
                "plan",
                "--preset",
                "quickstart",
                "--set",
                "model.name=tiny-random",
                "--set",
                "sampler.steps=2",
                "--set",
                "reward.name=jpeg-compressibility",
                "--set",
                "estimator.n=0",
                "--set",
                "train.batch_size=2",
                "--device-type",
                "cpu",
                "--budget",
                "2MiB",
            ]
        )
        == 2
    )
    captured = capsys.readouterr()
    assert "over the budget of 2.0 MiB" in captured.out and "error: draft plan predicts a peak" in captured.err


def test_train_refuses_before_loading_weights(tmp_path, monkeypatch, capsys):
    import draft_core.models.loading as loading
    from draft_core.cli import main
    from draft_core.training.runner import Trainer

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the budget was checked")

    monkeypatch.setattr(loading, "load_model", refuse)
    args = [
        "train",
        "--preset",
        "quickstart",
        "--set",
        "model.name=tiny-random",
        "--set",
        "sampler.steps=2",
        "--set",
        "reward.name=jpeg-compressibility",
        "--set",
        "estimator.name=draft-k",
        "--set",
        "estimator.k=1",
        "--set",
        "train.batch_size=1",
        "--set",
        "train.memory_budget=1MiB",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 2
    assert "over the memory budget of 1.0 MiB" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

    class Reached(Exception):
        pass

    def setup(self, resume=False):
        raise Reached

    monkeypatch.setattr(Trainer, "setup", setup)
    with pytest.raises(Reached):  # --no-plan-check goes straight to training
        main(args + ["--no-plan-check"])
