"""The benchmark scripts run end to end at toy scale, so that they never rot."""

from __future__ import annotations

import json
import math

import fig_k_effect
import fig_lora_mixing
import fig_rl_vs_draft
import fig_sample_efficiency
import gpu_memory_check
import gpu_plan_check
import gpu_scale
import gpu_sd14
import leaderboard
import pytest
import step_cost
import timestep_batch
import torch


def test_step_cost_script(tmp_path):
    out = tmp_path / "cost.json"
    res = step_cost.main(
        [
            "--steps",
            "2",
            "--batch",
            "1",
            "--rounds",
            "1",
            "--cases",
            "draft-k K=1",
            "--breakdown",
            "--checkpoint-cost",
            "--out",
            str(out),
        ]
    )
    assert all(v > 0 for v in res["lv_breakdown_seconds"].values())
    assert set(res["checkpoint_seconds"]) == {"draft-k K=1 [checkpoint auto]", "draft-k K=1 [checkpoint off]"}
    assert res["ratio_to_sampling"]["sampling"] == 1.0 and res["ratio_to_sampling"]["draft-k K=1"] > 0
    assert json.loads(out.read_text())["steps"] == 2


@pytest.mark.parametrize("model", ["tiny-random", "tiny-random-sd3"])
def test_speed_guard_compares_the_same_step(model):
    """The guard's hand-written DRaFT-1 (benchlib.minimal_draft1) computes what draft's draft-k K=1 does:
    the same rewards and the same LoRA gradient from the same seed, so its time is a fair floor."""
    import benchlib

    bench = benchlib.make_bench(model, 3, 2)
    # a smooth reward, so that the comparison measures the steps, not how a codec magnifies rounding
    bench.reward = lambda images, prompts: (images[:, 0] ** 2).mean((1, 2)) - images[:, 1:].mean((1, 2, 3))
    est = bench.estimator("draft-k K=1")
    grads = []
    for run in (lambda: est(bench.inputs(5)), lambda: benchlib.minimal_draft1(bench).loss(5)):
        out = run()
        loss, rewards = (out.loss, out.reward) if hasattr(out, "loss") else out
        loss.backward()
        grads.append((torch.cat([p.grad.flatten() for p in bench.params]).double(), rewards.double()))
        bench.optimizer.zero_grad(set_to_none=True)
    (g_draft, r_draft), (g_min, r_min) = grads
    assert g_draft.norm() > 0
    # float32 throughout; the two sides differ in summation order only (the flow step, CFG, the
    # checkpointed decode), a few ulps; a different step would differ at O(1).
    assert torch.allclose(r_draft, r_min, rtol=1e-5, atol=1e-6 * r_draft.abs().max().item())
    assert (g_draft - g_min).norm() <= 1e-4 * g_draft.norm()


def test_step_cost_reports_the_speed_guard(tmp_path):
    history = tmp_path / "history.jsonl"
    res = step_cost.main(
        ["--steps", "2", "--batch", "1", "--rounds", "1", "--cases", "sampling", "--history", str(history)]
    )
    assert res["guard_ratio"] > 0 and "minimal DRaFT-1" in res["seconds"]
    row = json.loads(history.read_text().splitlines()[-1])
    assert row["model"] == "tiny-random" and row["draft1_over_minimal"] == round(res["guard_ratio"], 4)


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


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_gpu_scale_runs_at_tiny_scale_on_cpu(tmp_path, family):
    out = tmp_path / "scale.json"
    cases = ["draft-k K=1", "draft (full, ckpt)"] if family == "sd" else ["draft-k K=1"]
    res = gpu_scale.main(
        [
            "--family",
            family,
            "--tiny",
            "--rounds",
            "1",
            "--cases",
            *cases,
            "--max-batch",
            "2" if family == "sd" else "1",
            "--out",
            str(out),
        ]
    )
    rows = res["batches"][1]
    assert (
        set(rows) == {"sampling", *cases}
        and res["family"] == family
        and res["model"] == gpu_scale.FAMILIES[family].tiny
    )
    assert res["sampler"] == ("ddim" if family in ("sd", "sdxl") else "euler")
    assert all(r["median_s"] > 0 and r["peak_mib"] > 0 for r in rows.values())
    assert set(res["largest_batch"]) == set(cases) and all(0 <= b <= 2 for b in res["largest_batch"].values())
    assert json.loads(out.read_text())["steps"] == 2 and "| draft-k K=1 | 1 |" in gpu_scale.markdown(res)


@pytest.mark.parametrize("model", ["tiny-random-sdxl", "tiny-random-sd3", "tiny-random-flux"])
def test_step_cost_script_takes_every_family(model):
    res = step_cost.main(["--model", model, "--steps", "2", "--batch", "1", "--rounds", "1", "--cases", "draft-k K=1"])
    assert (
        res["sampler"] == ("ddim" if model.endswith("sdxl") else "euler")
        and res["ratio_to_sampling"]["draft-k K=1"] > 0
    )


def test_largest_batch_doubles_then_bisects():
    tried = []

    def fits(b):
        tried.append(b)
        return b <= 11

    assert gpu_scale.largest_batch(fits, 64) == 11 and tried == [1, 2, 4, 8, 16, 12, 10, 11]
    assert gpu_scale.largest_batch(lambda b: b <= 100, 64) == 64
    assert gpu_scale.largest_batch(lambda b: False, 64) == 0


def test_gpu_plan_check_runs_at_tiny_scale_on_cpu(tmp_path):
    out = tmp_path / "plan.json"
    res = gpu_plan_check.main(["--tiny", "--batches", "1", "--cases", "DRaFT-1", "full DRaFT", "--out", str(out)])
    assert set(res["rows"]) == {"DRaFT-1 | hpsv2 | batch 1", "full DRaFT | hpsv2 | batch 1"}
    for row in res["rows"].values():
        assert abs(row["ratio_to_tally"] - 1) < 0.10 and row["rss_step_mib"] > 0
    assert json.loads(out.read_text())["steps"] == 2


def test_gpu_memory_check_rows_are_the_planned_targets_and_their_tiny_twins():
    """Its rows' configs are plan_levers.py's (the prediction it reads); the dry run's are the same rows on the
    tiny families, int8 for nf4 (a run of one row takes minutes on a loaded CPU: run by hand, RESULTS says)."""
    from plan_levers import ROWS, row_config

    assert gpu_memory_check.TARGETED and all(ROWS[label][3] is not None for label in gpu_memory_check.TARGETED)
    for label in gpu_memory_check.TARGETED:
        full, tiny = row_config(*ROWS[label][:3]), gpu_memory_check.tiny_config(label)
        assert (
            tiny.model.name == gpu_scale.FAMILIES[ROWS[label][0]].tiny
            and tiny.train.batch_size == full.train.batch_size
        )
        assert tiny.estimator == full.estimator and tiny.model.quantize == {"nf4": "int8"}.get(
            full.model.quantize, full.model.quantize
        )


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
    se = fig_sample_efficiency.main(
        TOY + ["--seeds", "0", "--only", "DRaFT-1", "DRaFT-LV n=2", "--out", str(runs / "se")]
    )
    assert (runs / "se.png").stat().st_size > 0 and json.loads((runs / "se.json").read_text())["curves"]
    lv, k1 = se["curves"]["DRaFT-LV n=2"], se["curves"]["DRaFT-1"]
    # DRaFT-LV queries the reward 1 + n times per image; the same base model starts both curves.
    assert lv["queries"][-1] == 3 * k1["queries"][-1] and lv["mean"][0] == pytest.approx(k1["mean"][0])

    ke = fig_k_effect.main(
        TOY + ["--seeds", "0", "--ks", "1", "2", "--batches", "1", "--train-ks", "1", "--out", str(runs / "ke")]
    )
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


def test_stratified_k_draws_cover_the_range_evenly():
    import peer_trl

    ks = peer_trl.stratified_ks(1, 50, 10, seed=0)
    # one K per tenth of [1, 50], the slice's midpoint, in a shuffled order
    assert sorted(ks) == [3, 8, 13, 18, 23, 28, 33, 38, 43, 48]
    assert ks != sorted(ks) and sum(ks) / len(ks) == pytest.approx((1 + 50) / 2, abs=0.5)
    assert sorted(peer_trl.stratified_ks(1, 4, 4, seed=1)) == [1, 2, 3, 4]


def test_peer_script_at_toy_scale():
    pytest.importorskip(
        "trl", reason="TRL 0.23.1 is an optional peer: pip install --no-deps -r benchmarks/requirements-peer.txt"
    )
    import peer_trl

    res = peer_trl.main(
        [
            "--steps",
            "2",
            "--batch",
            "1",
            "--rounds",
            "1",
            "--no-random",
            "--no-memory",
            "--ttr-steps",
            "2",
            "--ttr-max",
            "2",
            "--smooth",
            "1",
        ]
    )
    assert res["time_per_step_fixed"]["ratio_ours_to_trl"] > 0
    assert len(res["time_to_reward"]["reward_means"]["trl"]) == 2


def test_ddpo_peer_script_at_toy_scale():
    pytest.importorskip(
        "trl", reason="TRL 0.23.1 is an optional peer: pip install --no-deps -r benchmarks/requirements-peer.txt"
    )
    import peer_trl_ddpo

    res = peer_trl_ddpo.main(
        ["--steps", "2", "--batch", "2", "--rounds", "1", "--no-memory", "--sides", "trl", "draft ckpt"]
    )
    assert res["draft ckpt"]["ratio_to_trl"] > 0 and len(res["trl"]["reward_means"]) == 2


def test_timestep_batch_script_at_toy_scale(tmp_path):
    label = "grpo, digits-flow, flow-sde"
    res = timestep_batch.main(["--steps", "2", "--rounds", "1", "--only", label, "--json", str(tmp_path / "t.json")])
    assert list(res["cases"]) == [label]
    case = res["cases"][label]
    assert case["1"] > 0 and case["auto"] > 0 and json.loads((tmp_path / "t.json").read_text())["steps"] == 2


def test_leaderboard_quick_runs_every_registered_estimator(tmp_path):
    from draft_core.plugins import load_registry

    res = leaderboard.main(["--quick", "--tasks", "classifier", "--out", str(tmp_path / "lb")])
    part = res["tasks"]["classifier"]["digits-flow"]
    assert (tmp_path / "lb_classifier.png").stat().st_size > 0
    assert (
        set(load_registry().names("estimator")) - leaderboard.WRAPPERS <= set(part["rows"])
        and "alignprop" in part["rows"]
    )
    ran = {k for k, row in part["rows"].items() if "skipped" not in row}
    # every estimator of the paper runs on the differentiable reward (a newer one may refuse a model, saying why)
    assert {"draft", "draft-k", "alignprop", "draft-lv", "refl", "dpg", "ddpo", "grpo"} <= ran
    assert all(row["skipped"].strip() for row in part["rows"].values() if "skipped" in row)
    # every estimator that runs is in the table; the same base model and noise start every curve
    assert ran == set(part["table"]) and len({round(c["reward"][0], 4) for c in part["curves"].values()}) == 1
    for label in ran:
        grad = leaderboard.needs_gradient(part["rows"][label]["estimator"])
        assert part["rows"][label]["sampler"] == leaderboard.MODELS["digits-flow"]["samplers"][0 if grad else 1]
        assert part["table"][label]["svc_of"] == 10
    # the reward without gradient: an estimator that needs one refuses with the project's own message
    res = leaderboard.main(["--quick", "--tasks", "jpeg", "--only", "ddpo", "draft", "--out", str(tmp_path / "lb2")])
    rows = res["tasks"]["jpeg"]["digits-flow"]["rows"]
    assert "no gradient" in rows["draft"]["skipped"] and "skipped" not in rows["ddpo"]


def test_rl_vs_draft_script_at_toy_scale(runs):
    res = fig_rl_vs_draft.main(["--quick", "--out", str(runs / "rl")])
    assert set(res["curves"]) == {"digit-classifier", "jpeg-size"} and (runs / "rl.png").stat().st_size > 0
    for curves in res["curves"].values():
        # the same base model under the same evaluation sampler starts every curve of a panel
        assert max(c["mean"][0] for c in curves.values()) == pytest.approx(min(c["mean"][0] for c in curves.values()))
    c = res["curves"]["digit-classifier"]
    # queries as the runner counts them: DRaFT-LV 1 + n per image, GRPO G per prompt, DDPO one per sampled image
    assert c["DRaFT-LV n=2"]["queries"][-1] == 3 * c["DRaFT-1"]["queries"][-1]
    assert c["GRPO G=2"]["queries"][-1] == 2 * 2 and c["DDPO"]["queries"][-1] == 2 * 2
    assert "mean_own_sampler" in c["DDPO"] and json.loads((runs / "rl.json").read_text())["comparison"]


def test_rl_vs_draft_targets_and_censoring():
    rl = {
        "mean": [-3.0, -2.5, -2.0, -2.2],
        "queries": [0, 40, 80, 120],
        "seconds": [0, 10, 20, 30],
        "step": [0, 10, 20, 30],
    }
    fast = {"mean": [-3.0, -1.0], "queries": [0, 10], "seconds": [0, 4], "step": [0, 5]}
    res = fig_rl_vs_draft.compare({"DDPO": rl, "LV": fast}, "DDPO", "LV")
    # DDPO's best, -2.0, at 80 queries / 20 s; LV crosses it halfway between its evaluations: 5 queries, 2 s
    assert (
        res["target"] == -2.0 and res["draft_queries"] == pytest.approx(5) and res["queries_ratio"] == pytest.approx(16)
    )
    assert res["seconds_ratio"] == pytest.approx(10) and not res["ratio_is_upper_bound"]
    # with step costs measured side by side: DDPO's 20 steps at 3 s against LV's 2.5 steps at 1 s
    res = fig_rl_vs_draft.compare({"DDPO": rl, "LV": fast}, "DDPO", "LV", {"DDPO": 3.0, "LV": 1.0})
    assert res["seconds_ratio_interleaved"] == pytest.approx(24)
    slow = {"mean": [-3.0, -2.8], "queries": [0, 10], "seconds": [0, 4], "step": [0, 5]}
    res = fig_rl_vs_draft.compare({"DDPO": rl, "LV": slow}, "DDPO", "LV")
    assert not res["draft_reached"] and res["ratio_is_upper_bound"] and res["queries_ratio"] == pytest.approx(8)
    # the other way round: LV's best (-2.8 at 10 queries) is reached by DDPO at 40 queries (interpolated)
    assert res["at_draft_best"]["rl_queries"] == pytest.approx(40 * 0.2 / 0.5) and res["at_draft_best"]["rl_reached"]
    res = fig_rl_vs_draft.compare({"DDPO": rl, "LV": fast}, "DDPO", "LV")["at_draft_best"]
    assert not res["rl_reached"] and res["ratio_is_lower_bound"] and res["queries_ratio"] == pytest.approx(12)
    flat = {"mean": [-3.0, -3.1], "queries": [0, 10], "seconds": [0, 1], "step": [0, 5]}
    assert fig_rl_vs_draft.compare({"DDPO": flat, "LV": fast}, "DDPO", "LV")["improved"] is False


def test_guards_grid_puts_the_steps_grids_side_by_side(tmp_path, capsys):
    import fig_guards_grid

    from draft_core.media import read_png_info, save_grid

    (tmp_path / "samples").mkdir()
    for step in (0, 60):
        save_grid(torch.rand(4, 3, 8, 8), tmp_path / "samples" / f"step-{step:06d}.png", nrow=2, rows=["a", "b"])
    out = tmp_path / "grid.png"
    assert fig_guards_grid.main([str(tmp_path), "--steps", "0", "60", "--out", str(out)]) == 0
    assert read_png_info(out)["layout"]["top"] > 0
    assert fig_guards_grid.main([str(tmp_path), "--steps", "0", "70", "--out", str(out)]) == 2
    assert "no grid at" in capsys.readouterr().err
