"""Test helpers for plugin authors: the checklist every reward passes.

Subclass ``RewardConformance`` in a test module and supply ``make_reward``
(``from draft_core.testing import RewardConformance``; needs pytest).

Like diffusers' ``SchedulerCommonTest`` and kornia's per-op checklist (smoke,
cardinality, exception, gradcheck, device), so a plugin's reward gets the same
checks as the built-ins (also: weights take no gradient) by writing only::

    class TestMyReward(RewardConformance):
        def make_reward(self):
            return MyReward()

The reward is called as the core calls it, behind ``draft_core.rewarding.contract.CheckedReward``:
the core checks the images before any reward runs (so a reward need not: the shape and range
tests check that the core refuses bad images before the reward sees them) and checks what the
reward returns (a floating [B] on the images' device). A reward that declares
``differentiable = False`` (a black box, for ddpo/grpo) skips the gradient checks and must instead
return values without a graph. The base class name does not start with ``Test``, so pytest
collects only subclasses.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from draft_core.plugins.protocols import Reward
from draft_core.rewarding.contract import CheckedReward, checked_reward


class RewardConformance:
    """Shared tests for a ``Reward``; override the attributes below where a reward needs to."""

    #: side of the square test images; small keeps gradcheck fast on 2 CPU cores.
    image_size: int = 8
    #: pixel range of test images; a reward with clipping inside may want to stay off 0 and 1.
    image_range: tuple[float, float] = (0.0, 1.0)
    #: extra input dtypes that must give a finite [B] result (float32 is always checked).
    extra_dtypes: tuple[torch.dtype, ...] = (torch.float64, torch.bfloat16)
    #: keyword arguments for ``torch.autograd.gradcheck``.
    gradcheck_kwargs: dict[str, Any] = {}
    #: test that pixel values outside [0, 1] are refused (the core refuses them before any reward runs).
    checks_range: bool = True

    def make_reward(self) -> Reward:
        raise NotImplementedError("a RewardConformance subclass must define make_reward()")

    def checked(self, reward: Reward | None = None) -> CheckedReward:
        """``reward`` (default: a new ``make_reward()``) as the core calls it, behind its checks."""
        reward = self.make_reward() if reward is None else reward
        return checked_reward(reward, f"reward {type(reward).__name__} (under test)")

    # -- helpers ---------------------------------------------------------------------------

    def make_images(
        self, batch: int, *, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0
    ) -> torch.Tensor:
        """[batch, 3, S, S] uniform in ``image_range``, reproducible from ``seed``."""
        low, high = self.image_range
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, 3, self.image_size, self.image_size, generator=gen, dtype=torch.float64)
        return (low + (high - low) * x).to(device=device, dtype=dtype)

    @staticmethod
    def prompts(batch: int) -> list[str]:
        return [f"a photo of thing {i}" for i in range(batch)]

    # -- protocol and smoke ----------------------------------------------------------------

    def test_is_reward_protocol(self):
        assert isinstance(self.make_reward(), Reward)

    def test_smoke(self):
        out = self.checked()(self.make_images(2), self.prompts(2))  # the core checks type, shape, dtype, device
        assert torch.isfinite(out).all(), out

    @pytest.mark.parametrize("batch", [1, 3])
    def test_cardinality(self, batch):
        out = self.checked()(self.make_images(batch), self.prompts(batch))
        assert out.shape == (batch,)

    def test_dtypes(self):
        reward = self.checked()
        for dtype in self.extra_dtypes:
            out = reward(self.make_images(2, dtype=dtype), self.prompts(2))
            assert torch.isfinite(out).all(), (dtype, out)

    # -- exception -------------------------------------------------------------------------

    @pytest.mark.parametrize("shape", [(2, 8, 8), (2, 1, 8, 8)])
    def test_bad_shape_raises(self, shape):
        # The message must name the offending shape, in any bracket style.
        named = r"\D+".join(str(d) for d in shape)
        with pytest.raises(ValueError, match=named):
            self.checked()(torch.rand(shape), self.prompts(shape[0]))

    @pytest.mark.parametrize("bad_range", ["[-1, 1]", "[0, 255]"])
    def test_bad_range_raises(self, bad_range):
        if not self.checks_range:
            pytest.skip("this reward declares checks_range = False")
        images = self.make_images(2)
        images = images * 2 - 1 if bad_range == "[-1, 1]" else images * 255
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            self.checked()(images, self.prompts(2))

    # -- gradients -------------------------------------------------------------------------

    def _differentiable(self, reward) -> bool:
        from draft_core.plugins.bases import as_reward

        return bool(as_reward(reward).differentiable)

    def test_gradcheck(self):
        reward = self.make_reward()
        if not self._differentiable(reward):
            pytest.skip("the reward declares differentiable = False (test_declared_without_gradient checks that)")
        reward = self.checked(reward)
        images = self.make_images(2, dtype=torch.float64, seed=1).requires_grad_(True)
        prompts = self.prompts(2)
        # fast_mode draws its projection vectors from the global generator: fix them, so
        # the outcome does not depend on which tests ran before.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            assert torch.autograd.gradcheck(lambda x: reward(x, prompts), (images,), **self.gradcheck_kwargs)

    def test_gradient_reaches_images(self):
        reward = self.make_reward()
        if not self._differentiable(reward):
            pytest.skip("the reward declares differentiable = False (test_declared_without_gradient checks that)")
        images = self.make_images(2).requires_grad_(True)
        self.checked(reward)(images, self.prompts(2)).sum().backward()
        assert images.grad is not None, "no gradient reached the images (is the graph cut, e.g. by .detach()?)"
        assert torch.isfinite(images.grad).all()
        # every image in the batch gets a gradient, not just the first
        assert (images.grad.flatten(1).abs().sum(dim=1) > 0).all(), images.grad.flatten(1).abs().sum(dim=1)

    def test_parameters_frozen(self):
        # A reward is a fixed function: its weights (loaded on first call, if any) take no gradient.
        reward = self.make_reward()
        images = self.make_images(2).requires_grad_(True)
        out = self.checked(reward)(images, self.prompts(2))
        if self._differentiable(reward):
            out.sum().backward()
        if isinstance(reward, torch.nn.Module):
            trainable = [n for n, p in reward.named_parameters() if p.requires_grad or p.grad is not None]
            assert not trainable, f"parameters that take gradients: {trainable[:5]}"

    def test_architecture_is_what_loads(self):
        """A reward offering ``architecture()`` (``draft plan`` builds it on the meta device in place
        of its checkpoint) builds the network its weights load into: the same tensors, shape for shape."""
        from draft_core.planning.architectures import module_tensors

        reward = self.make_reward()
        if not callable(getattr(reward, "architecture", None)):
            pytest.skip("no architecture(): draft plan reads the reward's weights to plan it")
        self.checked(reward)(self.make_images(1), self.prompts(1))
        loaded = sorted(tuple(t.shape) for t in module_tensors(reward))
        assert loaded, "the reward loaded no network that draft plan can see (frozen_model(..., owner=self))"
        with torch.device("meta"):
            net = reward.architecture()
        assert sorted(tuple(t.shape) for t in (*net.parameters(), *net.buffers())) == loaded

    # -- device ----------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "device",
        [
            "cpu",
            pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")),
        ],
    )
    def test_device(self, device):
        reward = self.make_reward()
        if isinstance(reward, torch.nn.Module):
            reward = reward.to(device)
        images = self.make_images(2, device=device).requires_grad_(True)
        out = self.checked(reward)(images, self.prompts(2))  # the core checks that it is on the images' device
        assert out.device.type == device
        if self._differentiable(reward):
            out.sum().backward()
            assert images.grad is not None and images.grad.device.type == device

    def test_declared_without_gradient(self):
        """A reward declaring ``differentiable = False`` returns values without a graph, so no
        estimator can take a meaningless gradient from it by accident."""
        reward = self.make_reward()
        if self._differentiable(reward):
            pytest.skip("the reward is differentiable (test_gradcheck checks its gradient)")
        images = self.make_images(2).requires_grad_(True)
        out = self.checked(reward)(images, self.prompts(2))
        assert not out.requires_grad and out.grad_fn is None

    # -- determinism and batch independence ------------------------------------------------

    def test_deterministic(self):
        reward = self.checked()
        images = self.make_images(2)
        first = reward(images, self.prompts(2))
        second = reward(images.clone(), self.prompts(2))
        torch.testing.assert_close(first, second, rtol=0, atol=0)

    def test_batch_independence(self):
        reward = self.checked()
        images = self.make_images(3)
        prompts = self.prompts(3)
        batched = reward(images, prompts)
        # Each image alone scores as it does in the batch: batched kernels sum in another order, so a
        # float32 network may differ by some ulps of the scores' scale (more on another CPU), or of 1 for
        # small scores made of order-1 terms (cosines, log-probabilities); a reward that mixes the batch
        # (batch statistics, normalising across images) is off by far more.
        tol = {"rtol": 1e-5, "atol": 1e-5 * max(1.0, batched.detach().abs().max().item())}
        alone = torch.cat([reward(images[i : i + 1], prompts[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(batched, alone, **tol)
        # changing the other images leaves image 0's reward alone
        others = images.clone()
        others[1:] = self.make_images(2, seed=7)
        torch.testing.assert_close(reward(others, prompts)[0], batched[0], **tol)


def assert_plugin_listed(kind: str, name: str, distribution: str, plugin: str, capsys) -> None:
    """An installed distribution's plugin is registered under ``name`` and listed by ``draft
    plugins`` with its distribution and version (for a plugin distribution's own tests;
    ``capsys`` is pytest's fixture)."""
    from draft_core.cli import main
    from draft_core.plugins import load_registry

    entry = load_registry(refresh=True).get(kind, name)
    assert (entry.distribution, entry.plugin) == (distribution, plugin)
    assert main(["plugins"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.split()[1:2] == [name])
    assert row.split()[0] == kind and f"{distribution}==" in row


def assert_planned_like_measured(reward: dict[str, Any], checkpoint_key: str = "path") -> None:
    """``draft plan`` of a DRaFT-1 step on ``tiny-random`` scored by ``reward`` (a config's reward
    section: its name and arguments, e.g. a tiny ``arch`` and the checkpoint at ``checkpoint_key``),
    traced on the meta device with the reward's ``architecture()`` and the checkpoint moved away,
    predicts the same step on real tensors with the checkpoint loaded: the reward weights byte for
    byte, the peak within 10% and the FLOPs within 1%. For a plugin reward's own tests."""
    import json
    from pathlib import Path

    from draft_core.config import load_config
    from draft_core.planning.step import measure_step, plan_step

    sets = [
        "model.name=tiny-random",
        "sampler.steps=2",
        "train.batch_size=1",
        "lora.rank=2",
        "estimator.name=draft-k",
        "estimator.k=1",
        "prompts.items=[a photo of a cat]",
        f"reward={json.dumps(reward)}",
    ]
    measured = measure_step(load_config(None, sets), "cpu")
    missing = {**reward, checkpoint_key: str(Path(reward[checkpoint_key]).with_name("not-here.safetensors"))}
    predicted = plan_step(load_config(None, [*sets[:-1], f"reward={json.dumps(missing)}"]), "cpu")
    weights = "reward weights"
    assert measured.breakdown[weights] > 0, "the real step holds no reward weights: frozen_model(..., owner=self)?"
    assert predicted.breakdown[weights] == measured.breakdown[weights], (predicted.breakdown, measured.breakdown)
    assert abs(predicted.peak / measured.peak - 1) < 0.10, (predicted.breakdown, measured.breakdown)
    assert abs(predicted.flops / measured.flops - 1) < 0.01, (predicted.flops, measured.flops)
