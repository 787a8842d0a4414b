"""The paper's baselines as generation methods: best-of-n, DOODL, prompt templates; method specs; draft sample --method."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import LinearReward

from draft_core.cli import main
from draft_core.errors import ConfigError
from draft_core.evaluation.baselines import (
    DOODL,
    PAPER_TEMPLATE,
    BestOfN,
    NoiseSource,
    Plain,
    PromptTemplate,
    build_method,
    parse_spec,
    sample_images,
)
from draft_core.models.loading import load_model
from draft_core.models.tiny import build_tiny_random
from draft_core.samplers.ddim import DDIMSampler
from draft_core.samplers.ddpm import DDPMSampler
from draft_rewards.digits import DigitClassifier

PROMPTS = ["a cat", "a dog", "a cow"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_random()


@pytest.fixture(scope="module")
def reward(tiny):
    return LinearReward((3, *tiny.image_size))


def noise_for(model, n=3):
    return NoiseSource.per_item(model, list(range(100, 100 + n)))


# -- best-of-n -----------------------------------------------------------------------------------
def test_best_of_n_keeps_the_argmax_candidate(tiny, reward):
    sampler = DDIMSampler(steps=2, guidance_scale=3.0)
    noise = noise_for(tiny)
    out = BestOfN(reward, n=4).generate(tiny, sampler, PROMPTS, noise)
    cond = tiny.encode_prompts(PROMPTS)
    candidates = torch.stack([sample_images(tiny, sampler, cond, noise(k)) for k in range(4)], dim=1)  # [B, n, ...]
    scores = torch.stack([reward(candidates[:, k], PROMPTS) for k in range(4)], dim=1)
    torch.testing.assert_close(out.info["candidate_scores"], scores)
    choice = scores.argmax(dim=1)
    assert torch.equal(out.info["choice"], choice)
    assert len(set(choice.tolist())) > 1 or choice.tolist() != [0, 0, 0]  # not trivially the first candidate
    assert torch.equal(out.images, candidates[torch.arange(3), choice])
    # candidate 0 is what plain sampling gives, so best-of-n never does worse on its own reward
    assert torch.equal(Plain().generate(tiny, sampler, PROMPTS, noise).images, candidates[:, 0])
    assert (reward(out.images, PROMPTS) >= scores[:, 0]).all()


def test_best_of_one_is_plain_sampling(tiny, reward):
    sampler = DDIMSampler(steps=2, guidance_scale=3.0)
    noise = noise_for(tiny)
    assert torch.equal(
        BestOfN(reward, n=1).generate(tiny, sampler, PROMPTS, noise).images,
        Plain().generate(tiny, sampler, PROMPTS, noise).images,
    )


# -- DOODL -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_model("digits", "cpu")


def test_doodl_raises_the_reward_and_keeps_the_noise_on_the_sphere(digits):
    sampler = DDIMSampler(steps=4, guidance_scale=1.0)
    prompts = ["a handwritten digit three", "a handwritten digit one"]
    noise = NoiseSource.per_item(digits, [1, 2])
    out = DOODL(DigitClassifier(target=8), steps=4, lr=0.1, checkpoint=False).generate(digits, sampler, prompts, noise)
    history = out.info["reward_history"]  # [steps + 1, B]
    assert history.shape == (5, 2)
    assert (history[-1] > history[0]).all() and (history[-1] - history[0]).mean() > 1.0, history  # log p(8) rises
    x_T = out.info["x_T"]
    torch.testing.assert_close(x_T.flatten(1).norm(dim=1), torch.full((2,), x_T[0].numel() ** 0.5))
    # the returned images are those of the final x_T, and its reward is the last entry
    torch.testing.assert_close(DigitClassifier(target=8)(out.images, prompts), history[-1])
    assert not torch.equal(x_T, noise(0))


def test_gradient_with_respect_to_the_initial_noise_matches_finite_differences():
    model = build_tiny_random().to(dtype=torch.float64)
    sampler = DDIMSampler(steps=2, guidance_scale=3.0)
    cond = model.encode_prompts(PROMPTS[:2])
    reward = LinearReward((3, *model.image_size), dtype=torch.float64)
    x_T = model.make_noise(2, torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)

    def f(x):
        return reward(model.decode(sampler.sample(model, cond, x, grad_from=0, checkpoint=True)), PROMPTS[:2]).sum()

    (grad,) = torch.autograd.grad(f(x_T), [x_T])
    direction = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        numeric = (f(x_T + eps * direction) - f(x_T - eps * direction)) / (2 * eps)
    assert grad.abs().sum() > 0
    torch.testing.assert_close((grad * direction).sum(), numeric, rtol=1e-6, atol=1e-8)


def test_doodl_checkpointing_changes_nothing(tiny, reward):
    sampler = DDPMSampler(steps=2, guidance_scale=3.0)  # stochastic steps: one fixed chain per x_T
    outs = [
        DOODL(reward, steps=2, lr=0.05, checkpoint=c).generate(
            tiny, sampler, PROMPTS[:2], noise_for(tiny, 2), generator=torch.Generator().manual_seed(3)
        )
        for c in (True, False)
    ]
    torch.testing.assert_close(outs[0].info["x_T"], outs[1].info["x_T"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0].images, outs[1].images, rtol=1e-5, atol=1e-6)


def test_doodl_with_zero_steps_is_plain_sampling(tiny, reward):
    sampler = DDIMSampler(steps=2, guidance_scale=3.0)
    noise = noise_for(tiny)
    assert torch.equal(
        DOODL(reward, steps=0).generate(tiny, sampler, PROMPTS, noise).images,
        Plain().generate(tiny, sampler, PROMPTS, noise).images,
    )


# -- prompt templates ------------------------------------------------------------------------------
def test_prompt_template_shows_the_model_the_filled_template(tiny):
    sampler = DDIMSampler(steps=2, guidance_scale=3.0)
    noise = noise_for(tiny)
    out = PromptTemplate().generate(tiny, sampler, PROMPTS, noise)
    shown = [PAPER_TEMPLATE.format(p) for p in PROMPTS]
    assert out.info["model_prompts"] == shown
    assert shown[0] == "A stunning beautiful oil painting of a a cat, cinematic lighting, golden hour light."
    assert torch.equal(out.images, Plain().generate(tiny, sampler, shown, noise).images)
    with pytest.raises(ConfigError, match="exactly once"):
        PromptTemplate(template="no slot")


# -- specs --------------------------------------------------------------------------------------------
def test_method_specs():
    assert parse_spec("best-of-n:n=16", "--method") == ("best-of-n", {"n": 16})
    assert parse_spec("doodl:steps=5,lr=0.1,checkpoint=false", "--method") == (
        "doodl",
        {"steps": 5, "lr": 0.1, "checkpoint": False},
    )
    # commas inside a value are kept when no key= follows them
    assert parse_spec(f"prompt-template:template={PAPER_TEMPLATE}", "--method") == (
        "prompt-template",
        {"template": PAPER_TEMPLATE},
    )
    assert parse_spec("digit-classifier:target=8", "--reward") == ("digit-classifier", {"target": 8})
    assert build_method("best-of-n:n=3", reward=object()).label == "best-of-3"
    with pytest.raises(ConfigError, match="Did you mean 'doodl'"):
        build_method("dodl", reward=object())
    with pytest.raises(ConfigError, match="needs a reward"):
        build_method("best-of-n")
    with pytest.raises(ConfigError, match="accepts"):
        build_method("best-of-n:k=3", reward=object())
    with pytest.raises(ConfigError, match="positive integer"):
        build_method("best-of-n:n=0", reward=object())
    with pytest.raises(ConfigError, match="key=value"):
        build_method("doodl:20", reward=object())


# -- draft sample --method ----------------------------------------------------------------------------
def test_sample_with_best_of_n(tmp_path, capsys):
    args = ["sample", "--model", "tiny-random", "--prompt", "a cat", "--n", "2", "--steps", "2", "--save-tensor"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert (
        main([*args, "--method", "best-of-n:n=3", "--reward", "jpeg-compressibility", "--out", str(tmp_path / "best")])
        == 0
    )
    plain, best = (torch.load(tmp_path / d / "images.pt", weights_only=True) for d in ("plain", "best"))
    from draft_rewards.jpeg import JpegCompressibility

    r = JpegCompressibility()
    assert (r(best, ["a cat"] * 2) >= r(plain, ["a cat"] * 2) - 1e-6).all()


def test_sample_with_doodl_and_a_template(tmp_path, capsys):
    args = ["sample", "--model", "tiny-random", "--prompt", "a cat", "--n", "1", "--steps", "2"]
    assert (
        main([*args, "--method", "doodl:steps=1", "--reward", "jpeg-compressibility", "--out", str(tmp_path / "d")])
        == 0
    )
    assert main([*args, "--method", "prompt-template", "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "d" / "0000.png").is_file() and (tmp_path / "t" / "grid.png").is_file()


def test_sample_method_errors_before_loading(capsys, no_model):
    assert main(["sample", "--prompt", "a cat", "--method", "best-of-n", "--out", "o"]) == 2
    assert "needs a reward" in capsys.readouterr().err
    assert (
        main(
            ["sample", "--prompt", "a cat", "--method", "doodl", "--reward", "digit-classifier:target=12", "--out", "o"]
        )
        == 2
    )
    assert "digit-classifier" in capsys.readouterr().err
