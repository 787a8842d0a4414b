"""Memory at scale without changing the gradient: checkpointed decode and reward, DRaFT-LV's and
dpg's backward passes run part by part, and a bfloat16 base with a float32 LoRA."""

from __future__ import annotations

import weakref

import pytest
import torch
from model_fixtures import LinearReward, PooledLinearReward, grads_of, step_inputs, tiny_with_lora

from draft_core.lora import add_lora
from draft_core.memory import CheckpointedReward
from draft_core.models.tiny import SD14_SCHEDULER_CONFIG, build_tiny_random
from draft_core.protocols import StepInputs
from draft_core.samplers.ddim import DDIMSampler
from draft_estimators import DeterministicPolicyGradient, LowVariance, TruncatedBackprop

PROMPTS = ["a cat", "a dog"]


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


class CountingReward(PooledLinearReward):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images, prompts=()):
        self.calls += 1
        return super().forward(images, prompts)


def test_checkpointed_decode_and_reward_give_the_same_gradient_and_recompute():
    model, params = tiny_with_lora(torch.float64)
    sampler = DDIMSampler(steps=3, guidance_scale=3.0)
    reward = CountingReward()
    decodes = []
    model.vae.decoder.register_forward_hook(lambda *_: decodes.append(1))
    results = {}
    for mode in (False, True):
        model.checkpoint_decode = mode
        inputs = step_inputs(model, sampler, CheckpointedReward(reward, mode), PROMPTS)
        reward.calls, decodes[:] = 0, []
        results[mode] = grads_of(TruncatedBackprop(k=1), inputs, params)[0]
        # Checkpointed: the reward runs once more in the backward pass; the decoder runs one image at
        # a time, its blocks recomputed inside it (tests/test_block_checkpointing.py).
        assert (reward.calls, len(decodes)) == ((2, len(PROMPTS)) if mode else (1, 1))
    assert flat(results[False]).abs().max() > 0
    # The same arithmetic, image by image instead of batched: float64 rounding apart.
    torch.testing.assert_close(
        flat(results[True]), flat(results[False]), rtol=1e-10, atol=1e-14 * flat(results[False]).abs().max().item()
    )


def test_auto_leaves_plain_rewards_and_small_networks_alone():
    assert not CheckpointedReward(LinearReward((1, 3, 8, 8)), "auto").active  # a function (JPEG, ...): may count calls
    assert CheckpointedReward(LinearReward((1, 3, 8, 8)), True).active
    # a small network is not worth a second forward under auto (issue 27); a large one is
    assert (
        not CheckpointedReward(PooledLinearReward(), "auto").active
        and not CheckpointedReward(PooledLinearReward(), False).active
    )
    assert CheckpointedReward(PooledLinearReward(), True).active

    class Large(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8000, 8000, device="meta")  # 64M parameters, no memory

    assert CheckpointedReward(Large(), "auto").active


@pytest.mark.parametrize(
    "make",
    [lambda: LowVariance(n=2), lambda: DeterministicPolicyGradient(states=2, critic_rank=2)],
    ids=["draft-lv", "dpg"],
)
def test_backward_part_by_part_gives_the_same_gradient(make):
    model, params = tiny_with_lora(torch.float64)
    inputs = step_inputs(model, DDIMSampler(steps=3, guidance_scale=3.0), PooledLinearReward(), PROMPTS)
    state = inputs.generator.get_state()
    estimator = make()
    whole, out_whole = grads_of(estimator, inputs, params)
    inputs.generator.set_state(state)
    parts, out_parts = grads_of(estimator, inputs, params, split=True)
    assert out_parts.backward_done and not out_parts.loss.requires_grad
    assert out_parts.loss.item() == pytest.approx(out_whole.loss.item(), rel=1e-12)
    assert flat(whole).abs().max() > 0
    torch.testing.assert_close(flat(parts), flat(whole), rtol=1e-10, atol=1e-14 * flat(whole).abs().max().item())


class SavedBytes:
    """The peak bytes of tensors autograd keeps for the backward pass (outside checkpointed
    regions, which keep their own), counting each storage once and no parameters."""

    def __init__(self, exclude) -> None:
        self.exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self.live: dict[int, list] = {}  # storage -> [bytes, references]
        self.total = self.peak = 0

    class _Held:
        def __init__(self, t):
            self.t = t

    def _release(self, key):
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.total -= entry[0]
            del self.live[key]

    def pack(self, t):
        held = self._Held(t)
        key = t.untyped_storage().data_ptr()
        if key not in self.exclude:
            entry = self.live.setdefault(key, [t.untyped_storage().nbytes(), 0])
            self.total += entry[0] if entry[1] == 0 else 0
            entry[1] += 1
            self.peak = max(self.peak, self.total)
            weakref.finalize(held, self._release, key)
        return held

    def measure(self, fn):
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda held: held.t):
            fn()
        return self.peak


def test_draft_lv_part_by_part_keeps_no_more_than_draft_1():
    """Only one part's graph (last UNet step, decode, reward) is alive at a time: the tensors
    kept for the backward pass peak where DRaFT-1's do, not at (1 + n) times them."""
    model, params = tiny_with_lora(torch.float32)
    model.checkpoint_decode = False  # the decoder's activations in the count, as without checkpointing
    frozen = [p for m in model.modules() for p in m.parameters()]
    inputs = step_inputs(model, DDIMSampler(steps=3, guidance_scale=3.0), LinearReward((1, 3, 64, 64)), PROMPTS)
    peaks = {}
    for name, make, split in [
        ("draft-1", lambda: TruncatedBackprop(k=1), False),
        ("lv-parts", lambda: LowVariance(n=2), True),
        ("lv-whole", lambda: LowVariance(n=2), False),
    ]:
        peaks[name] = SavedBytes(frozen).measure(lambda: grads_of(make(), inputs, params, split=split))
    assert peaks["lv-parts"] <= 1.05 * peaks["draft-1"], peaks
    assert peaks["lv-whole"] >= 2.5 * peaks["draft-1"], peaks  # what the split saves


@pytest.mark.parametrize(
    "make, steps",
    [(lambda: TruncatedBackprop(k=1), 10), (lambda: TruncatedBackprop(k=10), 10), (lambda: LowVariance(n=2), 10)],
    ids=["draft-1", "draft-k10", "draft-lv"],
)
def test_bfloat16_base_with_float32_lora_follows_float64(make, steps):
    """The GPU default (paper A.1): base weights in bfloat16, LoRA in float32, no loss scaling.
    Its gradient points where the float64 gradient of the same weights does (cosine >= 0.99)."""
    ref, ref_params = tiny_with_lora(torch.float64)
    model = build_tiny_random(seed=0, scheduler_config=dict(SD14_SCHEDULER_CONFIG)).to(dtype=torch.bfloat16)
    params = add_lora(model.unet, rank=2, init=False)
    with torch.no_grad():
        for p, r in zip(params, ref_params):
            p.copy_(r)  # the same LoRA, rounded to float32
    assert {p.dtype for p in params} == {torch.float32} and model.unet.dtype == torch.bfloat16
    sampler = DDIMSampler(steps=steps, guidance_scale=7.5)
    noise = ref.make_noise(2, torch.Generator().manual_seed(0))  # float32, as the runner draws it
    reward = LinearReward((1, 3, 64, 64), torch.float64)  # cast to the images' dtype when called
    grads = {}
    for name, m, ps in [("f64", ref, ref_params), ("bf16", model, params)]:
        inputs = StepInputs(
            m,
            sampler,
            reward,
            m.encode_prompts(PROMPTS),
            noise.to(torch.float64 if name == "f64" else torch.float32),
            torch.Generator().manual_seed(1),
        )
        grads[name] = flat(grads_of(make(), inputs, ps, split=True)[0]).double()
    cosine = torch.nn.functional.cosine_similarity(grads["f64"], grads["bf16"], dim=0).item()
    assert cosine >= 0.99, cosine
