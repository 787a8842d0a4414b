"""KL regularisation (paper Appendix B.8) as a wrapper any estimator composes with.

loss = inner loss + β · (1/B) Σ_b ‖ε_finetuned,b − ε_pretrained,b‖²₂: the paper's
β_KL‖ε_finetuned − ε_pretrained‖²₂, a squared norm summed over every element of a sample's
prediction (4×64×64 for SD 1.x at 512²), averaged over the batch. Both predictions are
made at the input of the last denoising step the inner estimator's sampling ran (the
conditional prediction in the model's own parametrisation: ε, or v for v-prediction
models). The pretrained prediction is the same UNet with its adapters off, without
gradient. Config: ``estimator: {name: draft-lv, kl: 0.1}``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from draft_core.errors import ConfigError
from draft_core.lora import adapters_enabled
from draft_core.plugins.bases import EstimatorBase, as_estimator, unwrapped
from draft_core.plugins.protocols import EstimatorOutput, StepInputs


class _TracingSampler:
    """The inner estimator's sampler, recording each step's input of every sample() call."""

    def __init__(self, sampler) -> None:
        self._sampler = sampler
        self.trace: list = []
        self.stepwise: list = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sampler, name)

    def sample(self, *args, trace: list | None = None, **kwargs):
        self.trace = []
        out = self._sampler.sample(*args, trace=self.trace, **kwargs)
        if trace is not None:  # the inner estimator traces too (dpg)
            trace.extend(self.trace)
        return out

    def action(self, model, sample: torch.Tensor, step: int, cond) -> torch.Tensor:
        """Estimators that run the chain step by step (alignprop_range, drtune) are traced here, apart
        from ``trace``: dpg also calls ``action`` on states of a chain it sampled with ``sample``."""
        if step == 0:
            self.stepwise = []
        self.stepwise.append((step, sample.detach()))
        return self._sampler.action(model, sample, step, cond)


class KLRegularized(EstimatorBase):
    """Wraps an estimator; beta: weight of the squared prediction difference.

    Registered as ``kl``, an estimator wrapper: a config writes ``estimator: {name: draft-lv, kl: 0.1}``.
    """

    wraps_estimator = True

    def __init__(self, inner, beta: float) -> None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
            raise ConfigError(f"estimator.kl must be a number >= 0 (the weight β_KL), got {beta!r}.")
        inner = as_estimator(inner)
        if not inner.needs_reward_gradient:
            raise ConfigError(
                f"estimator.kl regularises the last step of a DRaFT-style sampling pass; {inner!r} trains on stored "
                "trajectories instead. For grpo use its own KL weight, estimator.beta; ddpo has no KL term."
            )
        self.inner = unwrapped(inner)
        self._inner = inner  # with the optional members' defaults
        self.beta = float(beta)

    def __repr__(self) -> str:
        return f"KLRegularized({self.inner!r}, beta={self.beta})"

    def __getattr__(self, name: str) -> Any:  # the inner estimator's own attributes
        if name in ("inner", "_inner"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    # The optional members are the inner estimator's.
    def check(self, sampler: Any) -> None:
        self._inner.check(sampler)

    def differentiated_steps(self, num_steps: int) -> range | None:
        return self._inner.differentiated_steps(num_steps)

    def on_optimizer_step(self, applied: bool) -> None:
        self._inner.on_optimizer_step(applied)

    def state_dict(self) -> dict[str, Any]:
        return self._inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._inner.load_state_dict(state)

    def __call__(self, inputs: StepInputs) -> EstimatorOutput:
        tracer = _TracingSampler(inputs.sampler)
        out = self.inner(replace(inputs, sampler=tracer))
        trace = tracer.trace or tracer.stepwise
        if not trace:
            raise RuntimeError("KLRegularized: the inner estimator did not sample through its sampler")
        step, x = trace[-1]
        model, cond = inputs.model, inputs.cond
        t = tracer.timesteps(model)[step]
        # The conditional outputs (no guidance; a distilled model gets its neutral guidance input, 1).
        finetuned = model.denoise(x, t, cond, 1.0)
        with torch.no_grad(), adapters_enabled(model.denoiser, False):
            pretrained = model.denoise(x, t, cond, 1.0)
        kl = (finetuned - pretrained).pow(2).flatten(1).sum(1).mean()
        if out.backward_done:  # the inner estimator ran its own backward: run this term's too
            inputs.backward(self.beta * kl)
            kl = kl.detach()
        out.loss = out.loss + self.beta * kl
        out.logs["kl"] = kl.item()
        return out
