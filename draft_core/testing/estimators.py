"""Test helpers for estimator authors: the checklist every gradient estimator passes.

Subclass ``EstimatorConformance`` and supply ``make_estimator`` (needs pytest)::

    from draft_core.testing.estimators import EstimatorConformance

    class TestMyEstimator(EstimatorConformance):
        def make_estimator(self):
            return MyEstimator(k=2)

It runs the estimator on ``tiny-random`` (or the model ``make_model`` returns: any family) with a random LoRA (both factors non-zero, so
every LoRA weight can get a gradient), a 3-step DDIM sampler with guidance and a small
network reward, and checks the ``GradientEstimator`` contract: the output's types and
shapes, a finite scalar loss whose gradient reaches the LoRA and nothing else, the same
result for the same random streams, the model left as it was found (adapters on, no
gradients on frozen weights), and ``check(sampler)``, when the estimator has one, accepting the
test sampler and refusing the one ``make_unsupported_sampler`` returns (override it when the
estimator has such a limit). An estimator that declares ``needs_reward_gradient = False`` (ddpo,
grpo) must also train on a reward without a graph (``ValuesOnlyReward``); one that needs a
stochastic sampler overrides ``make_sampler``. The gradients' values are each estimator's
own tests' business.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from draft_core.errors import DraftError
from draft_core.lora import add_lora
from draft_core.models.tiny import build_tiny_random
from draft_core.plugins.protocols import EstimatorOutput, GradientEstimator, StepInputs
from draft_core.samplers.ddim import DDIMSampler


class TinyNetworkReward(nn.Module):
    """r = tanh(w · avgpool8(images)): smooth, cheap, and a network (``dpg`` adapts it)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * 8 * 8, 1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g) * 0.3)
            self.fc.bias.zero_()
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor, prompts=()) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1] -> [B]."""
        x = nn.functional.adaptive_avg_pool2d(images.float(), 8).flatten(1)
        return torch.tanh(self.fc(x)).squeeze(1)


class ValuesOnlyReward:
    """``TinyNetworkReward``'s values without a graph: a black-box reward (``differentiable = False``)."""

    differentiable = False

    def __init__(self) -> None:
        self.inner = TinyNetworkReward()

    def __call__(self, images: torch.Tensor, prompts=()) -> torch.Tensor:
        with torch.no_grad():
            return self.inner(images, prompts)


class EstimatorConformance:
    """Shared tests for a ``GradientEstimator``; override ``make_estimator`` (and the attributes)."""

    #: sampling steps of the test sampler (estimators with a K or m must fit in it).
    steps: int = 3
    prompts: tuple[str, ...] = ("a cat", "a dog")

    def make_estimator(self) -> GradientEstimator:
        raise NotImplementedError("an EstimatorConformance subclass must define make_estimator()")

    def make_sampler(self):
        """Deterministic DDIM; an estimator that needs a stochastic sampler (ddpo, grpo) overrides this."""
        return DDIMSampler(steps=self.steps, guidance_scale=3.0)

    def make_unsupported_sampler(self):
        """A sampler the estimator's ``check`` must refuse (e.g. too few steps for its K), or None."""
        return None

    def make_model(self):
        """The model the checklist runs on: ``tiny-random`` (Stable Diffusion). Any model family works:
        return a small one of yours (and override ``make_sampler`` with a flow sampler for a flow family);
        the LoRA goes on its default targets."""
        return build_tiny_random(seed=0)

    # -- fixtures --------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def setup(cls):
        model = cls().make_model()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            params = add_lora(model, rank=2, init=False)
        return model, params

    def inputs(self, model, seed: int = 0) -> StepInputs:
        cond = model.encode_prompts(list(self.prompts))
        noise = model.make_noise(len(self.prompts), torch.Generator().manual_seed(seed))
        return StepInputs(
            model, self.make_sampler(), TinyNetworkReward(), cond, noise, torch.Generator().manual_seed(seed + 1)
        )

    @staticmethod
    def _zero(model, params) -> None:
        for p in params:
            p.grad = None
        for p in model.denoiser.parameters():
            p.grad = None

    def run(self, estimator, model, params, seed: int = 0):
        self._zero(model, params)
        out = estimator(self.inputs(model, seed))
        out.loss.backward()
        grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        return out, grads

    # -- the contract ------------------------------------------------------------------------

    def test_is_gradient_estimator(self):
        assert isinstance(self.make_estimator(), GradientEstimator)

    def test_check(self):
        estimator = self.make_estimator()
        bad = self.make_unsupported_sampler()
        check = getattr(estimator, "check", None)
        if check is None:
            assert bad is None, (
                "make_unsupported_sampler() is given, but the estimator has no check(sampler) to refuse it"
            )
            pytest.skip("the estimator has no check(sampler): it works with any sampler")
        assert check(self.make_sampler()) is None  # the test sampler is one it works with
        if bad is not None:
            with pytest.raises(DraftError):  # one paragraph for the user, before any model loads
                check(bad)

    def test_output_contract(self, setup):
        model, params = setup
        out, _ = self.run(self.make_estimator(), model, params)
        assert isinstance(out, EstimatorOutput)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.requires_grad
        assert out.reward.shape == (len(self.prompts),) and not out.reward.requires_grad
        assert torch.isfinite(out.reward).all()
        assert isinstance(out.queries, int) and out.queries >= 1
        assert all(isinstance(v, float) for v in out.logs.values()), out.logs
        if out.images is not None:
            assert out.images.shape[0] == len(self.prompts) and not out.images.requires_grad

    def test_gradient_reaches_the_lora_and_nothing_else(self, setup):
        model, params = setup
        _, grads = self.run(self.make_estimator(), model, params)
        flat = torch.cat([g.flatten() for g in grads])
        assert torch.isfinite(flat).all() and flat.abs().max() > 0
        lora = {id(p) for p in params}
        stray = [n for n, p in model.denoiser.named_parameters() if id(p) not in lora and p.grad is not None]
        assert not stray, f"frozen weights got gradients: {stray[:3]}"
        for module in model.modules():  # the text encoders, the VAE
            if module is not model.denoiser:
                assert all(p.grad is None for p in module.parameters())

    def test_same_random_streams_same_result(self, setup):
        model, params = setup
        out_a, grads_a = self.run(self.make_estimator(), model, params, seed=3)
        out_b, grads_b = self.run(self.make_estimator(), model, params, seed=3)
        assert torch.equal(out_a.loss.detach(), out_b.loss.detach())
        for a, b in zip(grads_a, grads_b):
            assert torch.equal(a, b)

    def test_trains_on_a_reward_without_gradient_when_it_says_so(self, setup):
        """An estimator declaring ``needs_reward_gradient = False`` gets its LoRA gradient from reward values alone."""
        estimator = self.make_estimator()
        from draft_core.plugins.bases import as_estimator

        if as_estimator(estimator).needs_reward_gradient:
            pytest.skip("the estimator needs the reward's gradient (needs_reward_gradient is not False)")
        model, params = setup
        self._zero(model, params)
        inputs = self.inputs(model)
        inputs.reward = ValuesOnlyReward()
        out = estimator(inputs)
        out.loss.backward()
        flat = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
        assert torch.isfinite(flat).all() and flat.abs().max() > 0

    def test_leaves_the_model_as_it_found_it(self, setup):
        model, params = setup
        probe = model.make_noise(1, torch.Generator().manual_seed(5))
        cond = model.encode_prompts(["a probe"])
        with torch.no_grad():
            before = model.denoise(probe, torch.tensor(10), cond)
        self.run(self.make_estimator(), model, params)
        with torch.no_grad():
            after = model.denoise(probe, torch.tensor(10), cond)
        assert torch.equal(before, after), "the estimator left the denoiser changed (adapters off, weights moved?)"
        assert all(p.requires_grad for p in params)
