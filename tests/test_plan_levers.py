"""draft plan and issue 21's memory levers: block checkpointing predicted against the real step
(CPU, within 10%), the quantized base, offloaded text encoders and FSDP2 sharding as exact
offsets of the base weights, and the fitting proposals that name them with their costs."""

from __future__ import annotations

import pytest
import torch

from draft_core.config import load_config
from draft_core.errors import ConfigError
from draft_core.planning.levers import QUANT_BYTES, apply_levers, largest_block_bytes, quantized_weights
from draft_core.planning.step import measure_step, plan_step

TINY = [
    "model.name=tiny-random",
    "sampler.steps=2",
    "train.batch_size=2",
    "lora.rank=2",
    "reward.name=jpeg-compressibility",
    "prompts.items=[a cat, a dog]",
    'estimator={"name": "draft-k", "k": 1}',
]
FLUX = [
    "model.name=tiny-random-flux",
    "sampler.name=euler",
    "sampler.steps=2",
    "sampler.guidance_scale=3.5",
    "train.batch_size=1",
    "lora.rank=2",
    "reward.name=jpeg-compressibility",
    "prompts.items=[a cat]",
    'estimator={"name": "draft-k", "k": 1}',
]
BLOCKS = ["train.checkpoint_denoiser=blocks", "train.checkpoint_decode=true"]


def _check(sets):
    config = load_config(None, sets)
    predicted, measured = plan_step(config, "cpu"), measure_step(config, "cpu")
    assert abs(predicted.peak / measured.peak - 1) < 0.10, (predicted.breakdown, measured.breakdown)
    assert abs(predicted.flops / measured.flops - 1) < 0.01
    return predicted


def test_block_checkpointing_prediction_matches_the_real_step_and_saves_activations():
    on = _check(TINY + BLOCKS)
    off = plan_step(
        load_config(None, TINY + ["train.checkpoint_denoiser=false", "train.checkpoint_decode=false"]), "cpu"
    )
    assert on.breakdown["activations"] < off.breakdown["activations"]
    assert on.flops > off.flops  # the recomputation


@pytest.mark.slow
@pytest.mark.parametrize("sets", [FLUX + BLOCKS, FLUX + ["train.checkpoint_denoiser=false"]], ids=["blocks", "none"])
def test_block_checkpointing_prediction_on_flux(sets):
    _check(sets)


def test_quantized_base_and_offloaded_encoders_are_exact_offsets_of_the_base_weights():
    plain = plan_step(load_config(None, TINY + ["model.offload_text_encoders=false"]), "cpu")
    for scheme in ("nf4",):  # int8 and fp8: the same arithmetic with another QUANT_BYTES
        q = plan_step(load_config(None, TINY + [f"model.quantize={scheme}", "model.offload_text_encoders=true"]), "cpu")
        from draft_core.models import load_model

        model = load_model("tiny-random", torch.device("cpu"), torch.float32)
        weights = quantized_weights(model)
        encoders = sum(
            t.numel() * t.element_size() for t in (*model.text_encoder.parameters(), *model.text_encoder.buffers())
        )
        saved = sum(w.numel() * 4 for w in weights) - int(sum(w.numel() for w in weights) * QUANT_BYTES[scheme])
        working = max(w.numel() * 4 for w in weights)  # one layer dequantized at a time
        assert plain.breakdown["base weights"] - q.breakdown["base weights"] == saved + encoders - working
        assert plain.peak - q.peak == saved + encoders - working
        assert q.breakdown["activations"] == plain.breakdown["activations"]
        assert any("model.quantize" in n for n in q.notes) and any("offload" in n for n in q.notes)


def test_auto_offload_only_where_the_encoders_matter():
    from draft_core.models import load_model

    model = load_model("tiny-random", torch.device("cpu"), torch.float32)
    assert apply_levers(model, "none", "auto").offload_saved == 0  # a few MiB: kept
    assert apply_levers(model, "none", "auto", peak=2, budget=1).offload_saved > 0  # over the budget: off
    assert apply_levers(model, "none", True).offload_saved > 0
    with pytest.raises(ConfigError, match="model.quantize"):
        apply_levers(model, "int4", "auto")


def test_processes_shard_the_frozen_denoiser():
    from draft_core.models import load_model

    model = load_model("tiny-random", torch.device("cpu"), torch.float32)
    frozen = sum(p.numel() * 4 for p in model.unet.parameters())
    levers = apply_levers(model, "none", False, processes=4)
    assert levers.shard_saved == max(frozen - (frozen // 4 + 2 * largest_block_bytes(model)), 0)
    with pytest.raises(ConfigError, match="--processes"):
        apply_levers(model, "none", False, processes=0)
    with pytest.raises(Exception, match="multiple of 4"):  # the batch is split over the processes
        plan_step(load_config(None, TINY), "cpu", processes=4)


@pytest.mark.slow
def test_processes_plan_is_one_devices_share():
    one = plan_step(load_config(None, TINY), "cpu")
    two = plan_step(load_config(None, TINY), "cpu", processes=2)
    assert two.processes == 2 and two.peak < one.peak  # half the batch, and a share of the base


def test_proposals_name_the_levers_and_their_costs():
    from draft_core.planning import fitting

    config = load_config(None, TINY)
    found = {p.label: p for p in fitting.candidates(config, "cuda")}
    assert found["checkpoint the denoiser block by block"].kind == "same result"
    assert found["text encoders off the device"].overrides == ["model.offload_text_encoders=true"]
    quant = [p for p in found.values() if p.label.startswith("frozen base quantized")]
    assert [p.overrides[0] for p in sorted(quant, key=lambda p: p.order)] == [
        "model.quantize=int8",
        "model.quantize=fp8",
        "model.quantize=nf4",
    ]
    assert all(p.kind == "lower precision" for p in quant)
    assert fitting.KIND_COSTS["same result"] == "costs time" and "quality" in fitting.KIND_COSTS["lower precision"]
    assert "model.quantize=fp8" not in [o for p in fitting.candidates(config, "cpu") for o in p.overrides]


def test_int8_base_and_offloaded_encoders_predicted_as_measured(monkeypatch):
    """torchao's int8 weights (tallied by their int8 values, scales and zero points), the full-size weight
    copies its layers keep for the backward pass, and the encoders off the device (their home is meta
    here, so their bytes leave the CPU's tally as they would leave a GPU's): the plan's offsets and
    its traced copies against the real step."""
    pytest.importorskip("torchao")
    from draft_core.training import prompt_cache

    monkeypatch.setattr(prompt_cache, "HOME", torch.device("meta"))
    sets = TINY + ["train.checkpoint_denoiser=false", "model.quantize=int8", "model.offload_text_encoders=true"]
    predicted, measured = plan_step(load_config(None, sets), "cpu"), measure_step(load_config(None, sets), "cpu")
    assert abs(predicted.peak / measured.peak - 1) < 0.10, (predicted.breakdown, measured.breakdown)
    # Closer than the target: the same weight bytes, and activations but for a few scalars' bytes.
    assert predicted.breakdown["base weights"] == measured.breakdown["base weights"]
    assert abs(predicted.breakdown["activations"] / measured.breakdown["activations"] - 1) < 1e-4
    plain = plan_step(load_config(None, TINY + ["train.checkpoint_denoiser=false"]), "cpu")
    assert predicted.breakdown["activations"] > plain.breakdown["activations"]  # the kept weight copies
