"""The benchmark scripts run end to end at toy scale, so that they never rot."""

from __future__ import annotations

import json
import math

import pytest
import torch

import fig_k_effect
import fig_lora_mixing
import fig_sample_efficiency
import gpu_sd14
import step_cost


def test_step_cost_script(tmp_path):
    out = tmp_path / "cost.json"
    res = step_cost.main(["--steps", "2", "--batch", "1", "--rounds", "1", "--cases", "draft-k K=1", "--breakdown",
                          "--checkpoint-cost", "--out", str(out)])
    assert all(v > 0 for v in res["lv_breakdown_seconds"].values())
    assert set(res["checkpoint_seconds"]) == {"draft-k K=1 [checkpoint auto]", "draft-k K=1 [checkpoint off]"}
    assert res["ratio_to_sampling"]["sampling"] == 1.0 and res["ratio_to_sampling"]["draft-k K=1"] > 0
    assert json.loads(out.read_text())["steps"] == 2


def test_sd14_configs_are_the_published_architecture():
    """Built on the meta device (no memory): SD 1.4's UNet has 859,520,964 parameters (REFERENCE §2)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**gpu_sd14.sd14_unet_config())
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964


def test_gpu_script_runs_at_tiny_scale_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    res = gpu_sd14.main(["--tiny", "--batches", "1", "--rounds", "1", "--out", str(out)])
    rows = res["batches"][1]
    assert set(rows) == set(gpu_sd14.CASES)
    assert all(r["median_s"] > 0 and r["peak_mib"] > 0 for r in rows.values())
    # (DRaFT-LV runs the backward pass of the sample and of each re-noised copy in turn, so its
    # peak is now about DRaFT-1's; tests/test_memory.py checks that, by what autograd keeps.)
    assert json.loads(out.read_text())["steps"] == 2


def test_hpsv2_sized_reward_is_a_differentiable_cosine():
    reward = gpu_sd14.HPSv2Sized(tiny=True)
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    r = reward(images, ["a cat", "a dog"])
    assert r.shape == (2,) and bool((r.abs() <= 1 + 1e-5).all())
    r.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAFT_BENCH_RUNS", str(tmp_path / "runs"))
    return tmp_path


TOY = ["--sampler-steps", "2", "--train-steps", "2", "--batch", "1", "--eval-every", "1"]


def test_figure_scripts_run_at_toy_scale(runs):
    se = fig_sample_efficiency.main(TOY + ["--seeds", "0", "--only", "DRaFT-1", "DRaFT-LV n=2", "--out", str(runs / "se")])
    assert (runs / "se.png").stat().st_size > 0 and json.loads((runs / "se.json").read_text())["curves"]
    lv, k1 = se["curves"]["DRaFT-LV n=2"], se["curves"]["DRaFT-1"]
    # DRaFT-LV queries the reward 1 + n times per image; the same base model starts both curves.
    assert lv["queries"][-1] == 3 * k1["queries"][-1] and lv["mean"][0] == pytest.approx(k1["mean"][0])

    ke = fig_k_effect.main(TOY + ["--seeds", "0", "--ks", "1", "2", "--batches", "1", "--train-ks", "1",
                                  "--out", str(runs / "ke")])
    init = ke["gradients"]["init"]
    assert init["angle_mean"][0] == pytest.approx(0, abs=0.1)  # DRaFT-1 against itself
    assert all(math.isfinite(n) and n > 0 for n in init["grad_norm_mean"])
    assert (runs / "ke.png").stat().st_size > 0

    mix = fig_lora_mixing.main(TOY + ["--out-dir", str(runs)])
    assert len(mix["scaling"]) == 5 and len(mix["mixing"]) == 9
    # Two training steps already move the reward away from the base model's (scale 0).
    assert mix["scaling"][0]["reward_a"] != mix["scaling"][-1]["reward_a"]
    assert (runs / "lora_scaling.png").exists() and (runs / "lora_mixing.png").exists()


def test_time_to_reward_level_and_censoring():
    import peer_trl

    means = {"trl": [-3.0, -2.9, -2.5, -2.0, -1.0], "ours": [-3.0, -2.0, -1.5, -1.4, -1.4]}
    seconds = {"trl": [2.0] * 5, "ours": [1.0] * 5}
    res = peer_trl.reach(means, seconds, level_frac=0.5, window=1)
    # start -3, best gains 2.0 (trl) and 1.6 (ours): level -3 + 0.5 * 2.0 = -2.0, reached at step 4 and 2.
    assert res["level"] == pytest.approx(-2.0)
    assert res["trl"] == {"reached": True, "steps_to_level": 4, "seconds_to_level": 8.0}
    assert res["ours"] == {"reached": True, "steps_to_level": 2, "seconds_to_level": 2.0}
    assert res["ratio"] == pytest.approx(0.25) and not res["ratio_is_bound"]
    # A side that never gets there is censored: its whole run time bounds the ratio from below.
    flat = peer_trl.reach({"trl": [-3.0, -1.0], "ours": [-3.0, -3.2]}, {"trl": [1.0, 1.0], "ours": [3.0, 3.0]}, 0.5, 1)
    assert flat["ours"] == {"reached": False, "steps_to_level": None, "seconds_to_level": 6.0}
    assert flat["ratio"] == pytest.approx(3.0) and flat["ratio_is_bound"]
    assert peer_trl.reach({"trl": [-3.0, -3.5], "ours": [-3.0, -4.0]}, seconds, 0.5, 1)["level"] is None


def test_peer_script_at_toy_scale():
    pytest.importorskip("trl", reason="TRL 0.23.1 is an optional peer: pip install --no-deps -r benchmarks/requirements-peer.txt")
    import peer_trl

    res = peer_trl.main(["--steps", "2", "--batch", "1", "--rounds", "1", "--no-random", "--no-memory",
                         "--ttr-steps", "2", "--ttr-max", "2", "--smooth", "1"])
    assert res["time_per_step_fixed"]["ratio_ours_to_trl"] > 0
    assert len(res["time_to_reward"]["reward_means"]["trl"]) == 2
