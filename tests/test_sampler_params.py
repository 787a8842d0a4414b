"""Learned sampler hyperparameters (paper Appendix B.12): guidance schedule and negative prompt."""

from __future__ import annotations

import json

import pytest
import torch
from model_fixtures import LinearReward, step_inputs, tiny_with_lora

from draft_core import cli
from draft_core.samplers import DDPMSampler
from draft_core.samplers.ddim import DDIMSampler
from draft_core.training.learned_sampling import FILENAME, GuidanceSchedule, LearnedSampling, NegativePrompt
from draft_estimators import FullBackprop

PROMPTS = ["a cat", "a dog"]


def test_interpolation_is_exact_at_the_knots_and_linear_between():
    sched = GuidanceSchedule(5, 0.0)
    with torch.no_grad():
        sched.weights.copy_(torch.tensor([1.0, 3.0, 2.0, 8.0, 5.0]))
    for j in range(5):
        assert sched.at(j, 5).item() == sched.weights[j].item()
        assert sched.at(2 * j, 9).item() == sched.weights[j].item()  # 9 steps: every other one is a knot
    assert sched.at(1, 9).item() == pytest.approx(2.0)  # halfway between 1 and 3
    assert sched.at(7, 9).item() == pytest.approx(6.5)
    assert sched.at(0, 1).item() == 1.0
    assert sched.resampled(3).tolist() == [1.0, 2.0, 5.0]  # 3 steps land on knots 0, 2, 4


@pytest.mark.parametrize("sampler_class", [DDIMSampler, DDPMSampler])
@pytest.mark.parametrize("knots, scale", [(4, 7.5), (50, 7.5), (4, 0.5)])
def test_a_constant_schedule_reproduces_plain_cfg_exactly(sampler_class, knots, scale):
    """One rule for a constant guidance scale and a learned one, below 1 too."""
    model, _ = tiny_with_lora()
    sampler = sampler_class(steps=4, guidance_scale=scale)
    cond = model.encode_prompts(PROMPTS)
    noise = model.make_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = sampler.sample(model, cond, noise, generator=torch.Generator().manual_seed(1))
        LearnedSampling(GuidanceSchedule(knots, scale)).attach(sampler)
        scheduled = sampler.sample(model, cond, noise, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, scheduled)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 3.0])
def test_constant_guidance_is_the_cfg_formula_for_every_scale(scale):
    """ε(∅) + g·(ε(c) − ε(∅)) for every g, also 0 <= g < 1, which diffusers' pipelines treat as
    no guidance (g = 1 is ε(c), computed with one UNet call)."""
    from model_fixtures import guided_eps

    model, _ = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=4, guidance_scale=scale)
    cond = model.encode_prompts(PROMPTS)
    x = model.make_noise(2, torch.Generator().manual_seed(0), dtype=torch.float64)
    t = sampler.timesteps(model)[1]
    with torch.no_grad():
        torch.testing.assert_close(
            sampler.action(model, x, 1, cond), guided_eps(model, x, t, cond, scale), rtol=1e-12, atol=1e-12
        )


def test_a_learned_schedule_warns_when_the_estimator_trains_only_some_knots(no_model):
    from draft_core.config import load_config
    from draft_core.training.components import build_components

    def warnings(*overrides):
        sets = ["sampler.steps=10", "learn.guidance=true", *overrides]
        return build_components(load_config(overrides=sets)).warnings

    (lv,) = warnings("estimator.name=draft-lv")  # the default estimator: the last knot only
    assert "steps 9 of 0-9" in lv and "knots 0-8 stay at sampler.guidance_scale=7.5" in lv and "'draft'" in lv
    (k2,) = warnings("estimator.name=draft-k", "estimator.k=2", "estimator.kl=0.1")  # also through the KL wrapper
    assert "steps 8-9 of 0-9" in k2 and "knots 0-7" in k2
    (refl,) = warnings("estimator.name=refl", "estimator.m=4")
    assert "steps 6-9" in refl
    assert warnings("estimator.name=draft") == [] and warnings("estimator.name=draft-k", "estimator.k=10") == []
    assert build_components(load_config(overrides=["estimator.name=draft-k"])).warnings == []  # learns no schedule


def test_the_negative_prompt_starts_at_the_empty_prompt_and_depends_on_the_prompt():
    model, _ = tiny_with_lora()
    cond = model.encode_prompts(PROMPTS)
    learned = LearnedSampling(negative=NegativePrompt(cond.cond.shape[-1], heads=4))
    start = learned.condition(cond)
    assert torch.equal(start.uncond, cond.uncond.expand_as(cond.cond))
    with torch.no_grad():
        learned.negative.mlp[2].weight.normal_(0, 0.1)
    moved = learned.condition(cond).uncond
    assert moved.shape == cond.cond.shape
    assert not torch.allclose(moved[0], moved[1]), "the negative embedding should depend on the prompt"


def test_gradients_of_the_schedule_match_finite_differences():
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=3, guidance_scale=3.0)
    with torch.random.fork_rng(devices=[]):  # the negative prompt's initial weights: the same in any test order
        torch.manual_seed(0)
        learned = LearnedSampling(GuidanceSchedule(3, 3.0).double(), NegativePrompt(32, heads=4).double())
    with torch.no_grad():
        learned.negative.mlp[2].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    learned.attach(sampler)
    reward = LinearReward((1, 3, 64, 64), torch.float64)
    inputs = step_inputs(model, sampler, reward, ["a cat"])
    base_cond = inputs.cond

    def loss():
        inputs.cond = learned.condition(base_cond)
        return FullBackprop(checkpoint=True)(inputs).loss

    loss().backward()
    grad = learned.guidance.weights.grad.clone()
    assert grad.abs().min() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learned.negative.mlp[2].parameters())
    h = 1e-4  # the loss is O(10): a smaller step loses the difference to float64 rounding
    for j in range(3):
        with torch.no_grad():
            learned.guidance.weights[j] += h
            up = loss().item()
            learned.guidance.weights[j] -= 2 * h
            down = loss().item()
            learned.guidance.weights[j] += h
        # Central differences in float64: rounding costs about |loss|*1e-16/h = 1e-10, truncation about as
        # much, which is 1e-5 of a small component; hence the floor at 1e-6 of the largest component.
        # A wrong gradient is off by the size of the components themselves.
        assert (up - down) / (2 * h) == pytest.approx(grad[j].item(), rel=1e-5, abs=1e-6 * grad.abs().max().item())


FAST = [
    "model.name=tiny-random",
    "reward.name=jpeg-compressibility",
    "sampler.steps=3",
    "estimator.name=draft-k",
    "estimator.k=2",
    "train.batch_size=2",
    "train.lr=0.01",
    "train.sample_every=0",
    "train.sample_per_prompt=1",
    "train.sample_prompts=[a cat]",
    "lora.rank=2",
    "learn.guidance=true",
    "learn.negative_prompt=true",
    "train.checkpoint_every=1",
]


def _train(out, steps, *extra):
    sets = [a for o in FAST + [f"train.steps={steps}", *extra] for a in ("--set", o)]
    return cli.main(["train", "--preset", "quickstart", "--out", str(out), *sets, "--no-progress"])


def test_training_learns_saves_plots_and_resumes_the_sampler_params(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(straight, 2) == 0
    assert _train(split, 1) == 0
    assert cli.main(["train", "--resume", str(split), "--set", "train.steps=2", "--no-progress"]) == 0
    a = LearnedSampling.load(straight / "lora")
    b = LearnedSampling.load(split / "lora")
    assert (straight / "guidance_schedule.png").exists() and (straight / "lora" / FILENAME).exists()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    # The schedule moved from the constant, at 50x the LoRA's learning rate.
    assert not torch.allclose(a.guidance.weights, torch.full((3,), 7.5))
    rows = [json.loads(r) for r in (straight / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2


def test_draft_sample_uses_the_learned_params_beside_the_lora(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, 1, "train.lr=0.05") == 0
    common = [
        "sample",
        "--model",
        "tiny-random",
        "--prompt",
        "a cat",
        "--n",
        "2",
        "--steps",
        "5",
        "--seed",
        "3",
        "--lora",
        str(run),
        "--save-tensor",
    ]
    assert cli.main([*common, "--out", str(tmp_path / "on")]) == 0
    assert "learned guidance schedule and negative prompt" in capsys.readouterr().err
    assert cli.main([*common, "--no-learned-sampling", "--out", str(tmp_path / "off")]) == 0
    on = torch.load(tmp_path / "on" / "images.pt", weights_only=True)
    off = torch.load(tmp_path / "off" / "images.pt", weights_only=True)
    assert not torch.allclose(on, off)

    # The same images by hand: LoRA, the schedule stretched to 5 steps, the negative prompt.
    from draft_core.lora import LoraSpec, apply_loras
    from draft_core.models.loading import load_model

    model = load_model("tiny-random", torch.device("cpu"))
    apply_loras(model.unet, [LoraSpec.parse(str(run))])
    sampler = DDIMSampler(steps=5, guidance_scale=7.5)
    learned = LearnedSampling.load(run / "lora")
    learned.attach(sampler)
    gen = torch.Generator().manual_seed(3)
    noise = model.make_noise(2, gen)
    with torch.no_grad():
        x = sampler.sample(model, learned.condition(model.encode_prompts(["a cat", "a cat"])), noise, generator=gen)
        images = model.decode(x)
    # Two float32 runs of the same sampling, here and through the CLI: equal up to rounding, a few ulps
    # of the images' [0, 1] scale where another CPU orders the sums otherwise; without the learned
    # schedule and negative prompt (`off`) they are far apart.
    torch.testing.assert_close(images, on, rtol=1e-5, atol=1e-5 * on.abs().max().item())


def test_bad_learn_values_are_clear_errors():
    from draft_core.config import load_config
    from draft_core.errors import ConfigError

    with pytest.raises(ConfigError, match="learn.guidance_lr_mult"):
        load_config(overrides=["learn.guidance_lr_mult=0"])
    with pytest.raises(ConfigError, match="unknown config key 'learn.guidence'"):
        load_config(overrides=["learn.guidence=true"])


def test_draft_eval_uses_the_learned_params_for_the_lora_rows_only(tmp_path):
    run = tmp_path / "run"
    assert _train(run, 1, "train.lr=0.05") == 0
    common = [
        "eval",
        "--model",
        "tiny-random",
        "--lora",
        str(run),
        "--base",
        "--prompts",
        "animals",
        "--prompts-per-category",
        "2",
        "--reward",
        "jpeg-compressibility",
        "--n-per-prompt",
        "1",
        "--steps",
        "3",
        "--quiet",
    ]
    assert cli.main([*common, "--out", str(tmp_path / "on")]) == 0
    assert cli.main([*common, "--no-learned-sampling", "--out", str(tmp_path / "off")]) == 0

    def scores(folder):
        rows = json.loads((folder / "results.json").read_text())["rows"]
        return {r["loras"] != []: r["scores"]["jpeg-compressibility"] for r in rows}

    on, off = scores(tmp_path / "on"), scores(tmp_path / "off")
    assert on[False] == off[False]  # the base model's row ignores what the LoRA learned
    assert on[True] != off[True]
