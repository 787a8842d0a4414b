"""Block-level checkpointing (issue 21): the denoiser's blocks (diffusers' switch, through
``ModelFamily.set_block_checkpointing``), the VAE decoder's blocks and an open_clip reward's
own switch recompute in the backward pass and give the gradient of the unchecked step
(float64, every tiny family); ``auto`` leaves small models alone (issue 27)."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import PooledLinearReward, grads_of, step_inputs

from draft_core.errors import ConfigError
from draft_core.lora import add_lora
from draft_core.memory import (
    CheckpointedReward,
    block_checkpointing,
    configure_denoiser,
    internal_switch,
    step_checkpointing,
)
from draft_core.samplers.ddim import DDIMSampler
from draft_core.samplers.flow import EulerSampler
from draft_estimators import TruncatedBackprop

PROMPTS = ["a cat", "a dog"]


def build(family: str):
    from draft_core.models.families.flux import build_tiny_random_flux
    from draft_core.models.families.sdxl import build_tiny_random_sdxl
    from draft_core.models.tiny import SD14_SCHEDULER_CONFIG, build_tiny_random
    from draft_core.models.tiny_sd3 import build_tiny_random_sd3

    makers = {
        "sd": lambda: build_tiny_random(scheduler_config=SD14_SCHEDULER_CONFIG),
        "sdxl": build_tiny_random_sdxl,
        "sd3": build_tiny_random_sd3,
        "flux": build_tiny_random_flux,
    }
    model = makers[family]().to(dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        params = add_lora(model.denoiser, rank=2, init=False)  # both factors random: every weight gets gradient
    for p in params:
        p.data = p.data.to(torch.float64)
    sampler = (
        EulerSampler(steps=2, guidance_scale=3.0) if model.flow_matching else DDIMSampler(steps=2, guidance_scale=3.0)
    )
    return model, params, sampler


def layers_of(model) -> list[torch.nn.Module]:
    return [m for m in model.denoiser.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_block_checkpointing_gives_the_same_gradient_and_recomputes_the_blocks(family):
    model, params, sampler = build(family)
    calls = []
    for layer in layers_of(model):
        layer.register_forward_pre_hook(lambda *_: calls.append(1))
    reward = PooledLinearReward()
    grads = {}
    for on in (False, True):
        assert model.set_block_checkpointing(on)
        inputs = step_inputs(model, sampler, reward, PROMPTS)
        calls.clear()
        grads[on] = torch.cat([g.flatten() for g in grads_of(TruncatedBackprop(k=1), inputs, params)[0]])
        counts = len(calls)
        with torch.no_grad():  # the same chain without autograd: what the step's forward passes cost
            calls.clear()
            sampler.sample(model, model.encode_prompts(PROMPTS), inputs.noise)
        # checkpointed: the blocks of the differentiable (last) step, and only they, run again in the
        # backward pass (diffusers checkpoints a UNet block's resnets and attentions, a transformer's blocks)
        per_step = len(calls) // sampler.num_steps
        recomputed = counts - len(calls)
        assert (0 < recomputed <= per_step) if on else recomputed == 0
    assert grads[False].abs().max() > 0
    # The same arithmetic recomputed (same RNG state): float64 rounding at most.
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-10, atol=1e-13 * grads[False].abs().max().item())


def test_vae_decoder_is_checkpointed_block_by_block_with_the_same_gradient():
    model, params, sampler = build("sd")
    ups = []
    for block in model.vae.decoder.up_blocks:
        block.register_forward_pre_hook(lambda *_: ups.append(1))  # a recomputation stops early: no post-hook
    whole = []
    model.vae.decoder.register_forward_hook(lambda *_: whole.append(1))
    grads = {}
    for mode in (False, True):
        model.checkpoint_decode = mode
        ups.clear(), whole.clear()
        inputs = step_inputs(model, sampler, PooledLinearReward(), PROMPTS)
        grads[mode] = torch.cat([g.flatten() for g in grads_of(TruncatedBackprop(k=1), inputs, params)[0]])
        n_up = len(model.vae.decoder.up_blocks)
        # blocks: the decoder runs once per image, each up block once more in the backward pass
        assert (len(whole), len(ups)) == ((len(PROMPTS), 2 * n_up * len(PROMPTS)) if mode else (1, n_up))
    assert not model.vae.decoder.gradient_checkpointing  # switched on only for the differentiated call
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-10, atol=1e-13 * grads[False].abs().max().item())


def test_modes_and_auto_threshold():
    assert not block_checkpointing("auto", (64, 64), 4)  # tiny-random, digits: no second forward
    assert block_checkpointing("auto", (512, 512), 1) and block_checkpointing("auto", (1024, 1024), 1)
    assert block_checkpointing("blocks", (8, 8), 1) and not block_checkpointing("step", (1024, 1024), 4)
    with pytest.raises(ConfigError, match="auto, blocks, step or false"):
        block_checkpointing("yes", (64, 64), 1)
    for mode, default, expected in (
        ("step", None, True),
        ("blocks", None, False),
        (False, None, False),
        ("auto", None, None),
        ("blocks", True, True),
    ):
        est = TruncatedBackprop(k=2, checkpoint=default)
        step_checkpointing(mode, est, mode == "blocks")
        assert est.checkpoint is expected, (mode, default)
    est = TruncatedBackprop(k=2, checkpoint=True)
    step_checkpointing(False, est, False)  # the train key decides
    assert est.checkpoint is False
    model, _, _ = build("sd")
    assert not configure_denoiser(model, TruncatedBackprop(), "auto", 2) and not model.unet.is_gradient_checkpointing
    assert configure_denoiser(model, TruncatedBackprop(), "blocks", 2) and model.unet.is_gradient_checkpointing


def test_open_clip_reward_uses_its_own_switch():
    open_clip = pytest.importorskip("open_clip")
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    net = open_clip.model.CLIP(**cfg)

    class Scorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, images, prompts):
            return self.net.encode_image(torch.nn.functional.interpolate(images, size=32)).sum(1)

    reward = Scorer()
    assert internal_switch(reward, True) and net.visual.transformer.grad_checkpointing
    assert not internal_switch(PooledLinearReward(), True)  # no library switch: one region instead
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    wrapped = CheckpointedReward(reward, True)
    g_on = torch.autograd.grad(wrapped(images, PROMPTS).sum(), images)[0]
    internal_switch(reward, False)
    g_off = torch.autograd.grad(reward(images, PROMPTS).sum(), images)[0]
    assert not net.visual.transformer.grad_checkpointing
    torch.testing.assert_close(g_on, g_off, rtol=1e-5, atol=1e-6 * g_off.abs().max().item())
