"""DDIMSampler against diffusers' pipeline, the textbook DDIM update, and the estimators' needs.

The textbook update is written here in float64 from the DDIM paper (eta = 0), independently
of diffusers: x̂0 from ε or v, ε̂, then x_prev = sqrt(ᾱ_prev) x̂0 + sqrt(1 - ᾱ_prev) ε̂.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from model_fixtures import tiny_with_lora

from draft_core.errors import ConfigError
from draft_core.models.tiny import SD14_SCHEDULER_CONFIG, build_tiny_random
from draft_core.samplers.ddim import DDIMSampler

PROMPTS = ["a cat", "a dog"]

SCHEDULER_CONFIGS = {
    "sd14-epsilon": SD14_SCHEDULER_CONFIG,
    "sd14-v": {**SD14_SCHEDULER_CONFIG, "prediction_type": "v_prediction"},
    "cosine-v-alpha-one": {
        **SD14_SCHEDULER_CONFIG,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
        "set_alpha_to_one": True,
    },
}


# -- the textbook DDIM update, float64 --------------------------------------------------
def textbook_alphas_cumprod(cfg: dict) -> torch.Tensor:
    """ᾱ_t for t = 0..N-1: [N] float64."""
    n = cfg["num_train_timesteps"]
    if cfg["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n, dtype=torch.float64) ** 2
    elif cfg["beta_schedule"] == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine schedule
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    else:
        raise ValueError(cfg["beta_schedule"])
    return torch.cumprod(1 - betas, 0)


def textbook_timesteps(cfg: dict, steps: int) -> list[int]:
    """'leading' spacing: t_i = (T - 1 - i) * (N // T) + steps_offset."""
    ratio = cfg["num_train_timesteps"] // steps
    return [(steps - 1 - i) * ratio + cfg.get("steps_offset", 0) for i in range(steps)]


def textbook_ddim_step(x, out, t: int, cfg: dict, steps: int, abar: torch.Tensor):
    """One deterministic DDIM step from timestep t; returns (x_prev, x̂0), float64."""
    x, out = x.double(), out.double()
    prev = t - cfg["num_train_timesteps"] // steps
    a_t = abar[t]
    if prev >= 0:
        a_prev = abar[prev]
    else:
        a_prev = torch.tensor(1.0, dtype=torch.float64) if cfg["set_alpha_to_one"] else abar[0]
    if cfg["prediction_type"] == "epsilon":
        x0 = (x - (1 - a_t).sqrt() * out) / a_t.sqrt()
        eps = out
    elif cfg["prediction_type"] == "v_prediction":
        x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
        eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
    else:
        raise ValueError(cfg["prediction_type"])
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, x0


# -- helpers ----------------------------------------------------------------------------
@contextlib.contextmanager
def unet_calls(model):
    """Record, per UNet forward call, whether autograd was enabled."""
    calls: list[bool] = []
    handle = model.unet.register_forward_pre_hook(lambda module, args: calls.append(torch.is_grad_enabled()))
    try:
        yield calls
    finally:
        handle.remove()


@contextlib.contextmanager
def unet_records(model):
    """Record each UNet call's (sample, timestep, output)."""
    records: list[tuple[torch.Tensor, int, torch.Tensor]] = []

    def hook(module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        records.append((sample.detach().clone(), int(t), output.sample.detach().clone()))

    handle = model.unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield records
    finally:
        handle.remove()


def guided(out: torch.Tensor, scale: float) -> torch.Tensor:
    """The CFG combination of one batched [uncond; cond] UNet output."""
    out_u, out_c = out.chunk(2)
    return out_u + scale * (out_c - out_u)


def noise_for(model, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return model.make_noise(batch, torch.Generator().manual_seed(seed), dtype=model.dtype)


def surrogate(x: torch.Tensor) -> torch.Tensor:
    """A fixed linear function of the sample, for gradients."""
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    return (x * w).sum()


def grads(params) -> list[torch.Tensor]:
    out = [p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None
    return out


def assert_grads_equal(a, b, rtol=1e-10, atol=1e-12):
    flat_a, flat_b = torch.cat([g.flatten() for g in a]), torch.cat([g.flatten() for g in b])
    assert flat_a.abs().max() > 0, "gradient is identically zero"
    torch.testing.assert_close(flat_a, flat_b, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_random()


@pytest.fixture(scope="module")
def tiny_pipeline(tiny, tmp_path_factory):
    folder = tiny.save_pretrained(tmp_path_factory.mktemp("tiny-random"))
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- parity with diffusers --------------------------------------------------------------
@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_matches_vanilla_diffusers_pipeline(tiny, tiny_pipeline, guidance):
    assert isinstance(tiny_pipeline.scheduler, DDIMScheduler)
    steps, seed = 3, 11
    expected = tiny_pipeline(
        PROMPTS,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        height=64,
        width=64,
    ).images
    with torch.no_grad():
        x = DDIMSampler(steps, guidance).sample(
            tiny, tiny.encode_prompts(PROMPTS), tiny.make_noise(len(PROMPTS), torch.Generator().manual_seed(seed))
        )
        images = tiny.decode(x)
    assert images.shape == expected.shape == (2, 3, 64, 64)
    # Our sampler and diffusers' pipeline: float32 runs of the same arithmetic, equal up to rounding that
    # depends on the CPU's kernels (0 with AVX-512 ones, 8e-7 with AVX2 ones, on images in [0, 1]);
    # guidance 7.0 for 7.5 is off by 5e-3, one step more by 0.15.
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_guidance_changes_the_sample(tiny):
    cond, noise = tiny.encode_prompts(PROMPTS), noise_for(tiny)
    with torch.no_grad():
        a = DDIMSampler(2, 7.5).sample(tiny, cond, noise)
        b = DDIMSampler(2, 1.0).sample(tiny, cond, noise)
    assert not torch.allclose(a, b)


def test_no_guidance_calls_the_unet_once_per_step_unbatched(tiny):
    with unet_calls(tiny) as calls, unet_records(tiny) as records, torch.no_grad():
        DDIMSampler(3, 1.0).sample(tiny, tiny.encode_prompts(PROMPTS), noise_for(tiny))
    assert len(calls) == 3
    assert all(sample.shape[0] == 2 for sample, _, _ in records)


# -- per-step arithmetic ----------------------------------------------------------------
@pytest.mark.parametrize("name", list(SCHEDULER_CONFIGS))
def test_diffusers_ddim_step_is_the_textbook_update(name):
    cfg = SCHEDULER_CONFIGS[name]
    abar = textbook_alphas_cumprod(cfg)
    sched = DDIMScheduler.from_config(cfg)
    torch.testing.assert_close(sched.alphas_cumprod.double(), abar, rtol=2e-5, atol=1e-7)
    g = torch.Generator().manual_seed(0)
    for steps in (4, 10):
        sched.set_timesteps(steps)
        assert sched.timesteps.tolist() == textbook_timesteps(cfg, steps)
        for t in sched.timesteps:
            x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
            out = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
            res = sched.step(out, t, x, eta=0.0)
            x_prev, x0 = textbook_ddim_step(x, out, int(t), cfg, steps, abar)
            torch.testing.assert_close(res.prev_sample, x_prev, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(res.pred_original_sample, x0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(SCHEDULER_CONFIGS))
def test_sampler_replays_as_the_textbook_update(name):
    """Record the UNet's outputs during sampling; the textbook update of their CFG mix must
    reproduce every step's input and the final sample."""
    cfg, steps, scale = SCHEDULER_CONFIGS[name], 4, 3.0
    model = build_tiny_random(scheduler_config=cfg).to(dtype=torch.float64)
    sampler = DDIMSampler(steps, scale)
    noise = noise_for(model)
    with unet_records(model) as records, torch.no_grad():
        final = sampler.sample(model, model.encode_prompts(PROMPTS), noise)
    assert [t for _, t, _ in records] == textbook_timesteps(cfg, steps)
    assert sampler.timesteps(model).tolist() == textbook_timesteps(cfg, steps)

    abar = textbook_alphas_cumprod(cfg)
    x = noise.double()  # DDIM's init_noise_sigma is 1
    for sample, t, out in records:
        torch.testing.assert_close(sample.chunk(2)[0], x, rtol=1e-5, atol=1e-5)
        x, _ = textbook_ddim_step(x, guided(out, scale), t, cfg, steps, abar)
    assert final.dtype == torch.float64
    torch.testing.assert_close(final, x, rtol=1e-5, atol=1e-5)


# -- early exit, predict_x0, add_noise ----------------------------------------------------
def test_stop_at_returns_the_steps_x0_prediction(tiny):
    steps, scale = 4, 3.0
    sampler = DDIMSampler(steps, scale)
    cond, noise = tiny.encode_prompts(PROMPTS), noise_for(tiny)
    cfg = tiny.scheduler_config
    abar = textbook_alphas_cumprod(cfg)
    with unet_records(tiny) as records, torch.no_grad():
        sampler.sample(tiny, cond, noise)
    for i in (0, 2, steps - 1):
        with unet_calls(tiny) as calls, torch.no_grad():
            x0 = sampler.sample(tiny, cond, noise, stop_at=i)
        assert len(calls) == i + 1
        x_i, t, out = records[i]
        x_i = x_i.chunk(2)[0]
        with torch.no_grad():
            torch.testing.assert_close(x0, sampler.predict_x0(tiny, x_i, i, cond), rtol=0, atol=0)
        _, expected = textbook_ddim_step(x_i, guided(out, scale), t, cfg, steps, abar)
        torch.testing.assert_close(x0.double(), expected, rtol=1e-5, atol=1e-5)


def test_stop_at_with_grad_from_is_differentiable():
    model, _ = tiny_with_lora()
    sampler = DDIMSampler(3, 3.0)
    cond, noise = model.encode_prompts(PROMPTS), noise_for(model)
    with torch.no_grad():
        plain = sampler.sample(model, cond, noise, stop_at=2)
    with unet_calls(model) as calls:
        x0 = sampler.sample(model, cond, noise, grad_from=1, stop_at=2)
    assert x0.grad_fn is not None
    assert calls == [False, True, True]
    torch.testing.assert_close(x0.detach(), plain, rtol=1e-6, atol=1e-6)


def test_add_noise_is_the_forward_process(tiny):
    steps = 4
    sampler = DDIMSampler(steps)
    abar = textbook_alphas_cumprod(tiny.scheduler_config)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    for i, t in enumerate(textbook_timesteps(tiny.scheduler_config, steps)):
        expected = abar[t].sqrt() * x0.double() + (1 - abar[t]).sqrt() * eps.double()
        got = sampler.add_noise(tiny, x0, eps, i)
        assert got.shape == x0.shape
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


# -- gradients ---------------------------------------------------------------------------
def test_grad_from_runs_only_the_last_steps_with_autograd():
    model, _ = tiny_with_lora()
    steps = 4
    sampler = DDIMSampler(steps, 3.0)
    cond, noise = model.encode_prompts(PROMPTS), noise_for(model)
    with unet_calls(model) as calls:
        plain = sampler.sample(model, cond, noise)
    assert plain.grad_fn is None
    assert not any(calls)
    for grad_from in (0, 2, steps - 1):
        with unet_calls(model) as calls:
            x = sampler.sample(model, cond, noise, grad_from=grad_from)
        assert x.grad_fn is not None
        assert calls == [False] * grad_from + [True] * (steps - grad_from)
        assert torch.equal(x.detach(), plain)


@pytest.mark.parametrize("grad_from", [0, 2])
def test_checkpointing_recomputes_each_step_and_keeps_the_gradient(grad_from):
    model, params = tiny_with_lora(torch.float64)
    steps = 4
    sampler = DDIMSampler(steps, 3.0)
    cond, noise = model.encode_prompts(PROMPTS), noise_for(model)
    results = {}
    for checkpoint in (False, True):
        x = sampler.sample(model, cond, noise, grad_from=grad_from, checkpoint=checkpoint)
        with unet_calls(model) as calls:
            surrogate(x).backward()
        assert len(calls) == (steps - grad_from if checkpoint else 0)
        results[checkpoint] = grads(params)
    assert_grads_equal(results[True], results[False])


# -- LoRA step windows ------------------------------------------------------------------
def test_lora_step_window():
    model, _ = tiny_with_lora()
    steps = 4
    sampler = DDIMSampler(steps, 3.0)
    cond, noise = model.encode_prompts(PROMPTS), noise_for(model)
    with torch.no_grad():
        default = sampler.sample(model, cond, noise)
        never = sampler.sample(model, cond, noise, lora_steps=(0, 0))
        always = sampler.sample(model, cond, noise, lora_steps=(0, steps))
        window = sampler.sample(model, cond, noise, lora_steps=(1, 3))
        model.unet.disable_adapters()
        try:
            base = sampler.sample(model, cond, noise)
        finally:
            model.unet.enable_adapters()
        again = sampler.sample(model, cond, noise)
    assert torch.equal(never, base)
    assert torch.equal(always, default)
    assert torch.equal(again, default), "the window left the adapters disabled"
    assert not torch.allclose(default, base, atol=1e-4)
    assert not torch.allclose(window, default, atol=1e-4)
    assert not torch.allclose(window, base, atol=1e-4)


def test_lora_window_gradient_is_the_same_with_checkpointing():
    """Recomputation in the backward pass must see the adapter state of its forward step."""
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(4, 3.0)
    cond, noise = model.encode_prompts(PROMPTS), noise_for(model)
    results = {}
    for checkpoint in (False, True):
        x = sampler.sample(model, cond, noise, grad_from=0, checkpoint=checkpoint, lora_steps=(1, 3))
        surrogate(x).backward()
        results[checkpoint] = grads(params)
    assert_grads_equal(results[True], results[False])
    full = sampler.sample(model, cond, noise, grad_from=0)
    surrogate(full).backward()
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    assert not torch.allclose(flat(grads(params)), flat(results[False])), "the window did not change the gradient"


# -- eta > 0 ----------------------------------------------------------------------------
def test_stochastic_ddim_is_reproducible_from_the_generator(tiny):
    sampler = DDIMSampler(3, 3.0, eta=0.5)
    cond, noise = tiny.encode_prompts(PROMPTS), noise_for(tiny)
    with torch.no_grad():
        a = sampler.sample(tiny, cond, noise, generator=torch.Generator().manual_seed(1))
        b = sampler.sample(tiny, cond, noise, generator=torch.Generator().manual_seed(1))
        c = sampler.sample(tiny, cond, noise, generator=torch.Generator().manual_seed(2))
        deterministic = DDIMSampler(3, 3.0).sample(tiny, cond, noise)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, deterministic)


def test_stochastic_ddim_gradient_is_the_same_with_checkpointing():
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(4, 3.0, eta=0.5)
    cond, noise = model.encode_prompts(PROMPTS), noise_for(model)
    results = {}
    for checkpoint in (False, True):
        x = sampler.sample(
            model, cond, noise, grad_from=1, checkpoint=checkpoint, generator=torch.Generator().manual_seed(5)
        )
        surrogate(x).backward()
        results[checkpoint] = grads(params)
    assert_grads_equal(results[True], results[False])


# -- bad arguments ----------------------------------------------------------------------
@pytest.mark.parametrize("steps", [0, -3])
def test_bad_step_count(steps):
    with pytest.raises(ConfigError, match=f"got {steps}"):
        DDIMSampler(steps=steps)


def test_negative_eta():
    with pytest.raises(ConfigError, match="-0.1"):
        DDIMSampler(steps=4, eta=-0.1)


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"grad_from": 4}, "grad_from=4"),
        ({"grad_from": -1}, "grad_from=-1"),
        ({"stop_at": 4}, "stop_at=4"),
        ({"grad_from": 2, "stop_at": 1}, "stop_at=1"),
    ],
)
def test_bad_sample_arguments(tiny, kwargs, named):
    sampler = DDIMSampler(4)
    with unet_calls(tiny) as calls, pytest.raises(ConfigError, match=named):
        sampler.sample(tiny, tiny.encode_prompts(PROMPTS), noise_for(tiny), **kwargs)
    assert calls == [], "arguments must be checked before sampling"
