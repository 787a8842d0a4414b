"""KL regularisation (paper Appendix B.8) as a wrapper any estimator composes with.

loss = inner loss + β · mean ‖ε_finetuned − ε_pretrained‖², both predictions made at the
input of the last denoising step the inner estimator's sampling ran (the conditional
prediction in the model's own parametrisation: ε, or v for v-prediction models). The
pretrained prediction is the same UNet with its adapters off, without gradient. Config:
``estimator: {name: draft-lv, kl: 0.1}``.
"""

from __future__ import annotations

from typing import Any

import torch

from draft_core.errors import ConfigError
from draft_core.lora import adapters_enabled
from draft_core.models.pipeline import upcast
from draft_core.plugins.protocols import EstimatorOutput, StepInputs


class _TracingSampler:
    """The inner estimator's sampler, recording each step's input of every sample() call."""

    def __init__(self, sampler) -> None:
        self._sampler = sampler
        self.trace: list = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sampler, name)

    def sample(self, *args, **kwargs):
        self.trace = []
        return self._sampler.sample(*args, trace=self.trace, **kwargs)


class KLRegularized:
    """Wraps an estimator; beta: weight of the squared prediction difference.

    Registered as ``kl``, an estimator wrapper: a config writes ``estimator: {name: draft-lv, kl: 0.1}``.
    """

    wraps_estimator = True

    def __init__(self, inner, beta: float) -> None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
            raise ConfigError(f"estimator.kl must be a number >= 0 (the weight β_KL), got {beta!r}.")
        if not getattr(inner, "needs_reward_gradient", True):
            raise ConfigError(
                f"estimator.kl regularises the last step of a DRaFT-style sampling pass; {inner!r} trains on stored "
                "trajectories instead. For grpo use its own KL weight, estimator.beta; ddpo has no KL term."
            )
        self.inner = inner
        self.beta = float(beta)

    def __repr__(self) -> str:
        return f"KLRegularized({self.inner!r}, beta={self.beta})"

    def __getattr__(self, name: str) -> Any:  # the inner estimator's check, state_dict, ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, inputs: StepInputs) -> EstimatorOutput:
        tracer = _TracingSampler(inputs.sampler)
        out = self.inner(StepInputs(inputs.model, tracer, inputs.reward, inputs.cond, inputs.noise, inputs.generator))
        if not tracer.trace:
            raise RuntimeError("KLRegularized: the inner estimator did not sample through its sampler")
        step, x = tracer.trace[-1]
        model, cond = inputs.model, inputs.cond
        t = tracer.timesteps(model)[step]
        sample = x.to(model.unet.dtype)
        finetuned = upcast(model.unet(sample, t, encoder_hidden_states=cond.cond).sample)
        with torch.no_grad(), adapters_enabled(model.unet, False):
            pretrained = upcast(model.unet(sample, t, encoder_hidden_states=cond.cond).sample)
        kl = (finetuned - pretrained).pow(2).flatten(1).mean(1).mean()
        out.loss = out.loss + self.beta * kl
        out.logs["kl"] = kl.item()
        return out
