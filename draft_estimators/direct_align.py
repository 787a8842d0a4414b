r"""Direct-Align (SRPO, Shen et al. 2025, arXiv 2509.06942): one differentiable step from a finished
image re-noised with a known noise, and the clean image recovered from it in closed form.

One call:

1. Roll out the batch with the configured sampler, without autograd: x0 = sample(ε), ε the
   batch's initial noise, the "predefined" noise Direct-Align injects.
2. Draw an injection step i uniformly among the sampler's steps whose position i/T lies in
   ``inject_range`` and inject the known noise at its level: x_i = a_i·sg(x0) + s_i·ε
   (``sampler.add_noise``; a = 1 − σ, s = σ for a flow model, a = √ᾱ, s = √(1 − ᾱ) for a
   diffusion one).
3. One model step, the only one with gradient, from level i to level j = i + ``jump``
   (level T is the clean end, a = 1, s = 0): the one-step prediction x̂0_θ = predict_x0(x_i)
   and its noise ε̂_θ = (x_i − a_i·x̂0_θ)/s_i give the DDIM/Euler step x_j = a_j·x̂0_θ + s_j·ε̂_θ
   (for a flow model exactly x_i + (σ_j − σ_i)·v_θ, SRPO's step).
4. Recover the clean image with the known noise: x̂0 = (x_j − s_j·ε)/a_j, and score it:

       loss = −d(i) · mean_b r(decode(x̂0_b), prompt_b)

   d(i) is the ``discount`` over timesteps, linear in the injection position from its first
   value (the noisiest end of ``inject_range``) to its second.

Because x_i was made with ε, ε̂_θ − ε = a_i·(x0 − x̂0_θ)/s_i, and the recovery is an
interpolation: x̂0 = (1 − λ)·x̂0_θ + λ·sg(x0) with λ = (s_j/a_j)/(s_i/a_i), the ratio of the two
levels' noise-to-signal ratios. The gradient is therefore (1 − λ)·d(i) times ReFL's one-step
gradient at x_i, with the image scored close to the finished one (λ near 1 for a short jump)
rather than a blurry x̂0 from high noise: that is why Direct-Align can train at high noise,
where ReFL cannot. With j = T (λ = 0) the recovery is x̂0_θ itself: from the sampler's own
state at its last step it is ReFL's prediction at t = 1 (``refl`` with m = 1; DRaFT-1 on
``euler``).

Semantic relative preference (SRP), an option for a reward that reads prompts
(``uses_prompts``): with ``positive`` and ``negative`` control words (one of each drawn per call
from each list), the score is (1 + k(i))·r(x̂0, "<pos>. prompt") − r(x̂0, "<neg>. prompt"), k(i)
linear over the injection position like the discount (SRPO's ``discount_pos``); its code's HPS
values, k from 0.1 at low noise to 0.25 at high, are ``srp_k: [0.25, 0.1]`` here. The reward is
then queried twice per image, and the reported reward is the SRP value.

Left out from SRPO: its inversion branch (the same step taken towards noise with the control
words swapped), its hinge loss ReLU(0.7 − r) (specific to HPS's scale; draft's losses are −r),
and its continuous 1000-point σ grid (here the injection levels are the sampler's own steps,
which makes the method work the same on diffusion and flow models). SRPO's default σ range,
0.964 to 0.75, is steps 5 to 25 of its 50-step shifted grid: ``inject_range: [0.1, 0.5]``.
"""

from __future__ import annotations

import torch

from draft_core.errors import ConfigError
from draft_core.plugins.bases import EstimatorBase, SamplerBase, as_reward, unwrapped
from draft_core.plugins.protocols import EstimatorOutput, StepInputs


def _pair(key: str, value, low: float = -float("inf"), high: float = float("inf"), ordered: bool = False):
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high for v in value)
    if not ok or (ordered and value[0] > value[1]):
        order = " with first <= second" if ordered else ""
        bounds = f" in [{low}, {high}]" if low > -float("inf") else ""
        raise ConfigError(f"estimator.{key} must be a pair [first, second] of numbers{bounds}{order}, got {value!r}.")
    return float(value[0]), float(value[1])


def _words(key: str, value) -> tuple[str, ...] | None:
    if value is None:
        return None
    words = (value,) if isinstance(value, str) else value
    if not isinstance(words, (list, tuple)) or not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise ConfigError(
            f"estimator.{key} must be a control word or phrase, or a non-empty list of them "
            f"(e.g. ['Realistic photo', 'Detailed']), got {value!r}."
        )
    return tuple(words)


def noise_level(sampler, model, step: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, s) of the sampler's level ``step`` (x = a·x0 + s·ε), 0-d in ``like``'s dtype; level T is the clean end (1, 0)."""
    if step >= sampler.num_steps:
        return torch.ones((), dtype=like.dtype, device=like.device), torch.zeros(
            (), dtype=like.dtype, device=like.device
        )
    one, zero = torch.ones_like(like[:1]), torch.zeros_like(like[:1])
    a = sampler.add_noise(model, one, zero, step).flatten()[0].to(like.dtype)
    s = sampler.add_noise(model, zero, one, step).flatten()[0].to(like.dtype)
    return a, s


def recover(sampler, model, x_i: torch.Tensor, eps: torch.Tensor, step: int, target: int, cond) -> torch.Tensor:
    """Direct-Align's x̂0 [B, C, h, w] from the noisy ``x_i`` at level ``step``, made with the known noise ``eps``:
    one model step to level ``target`` (> step; T is the clean end), then the known noise taken out."""
    x0_pred = sampler.predict_x0(model, x_i, step, cond)
    a_i, s_i = noise_level(sampler, model, step, x0_pred)
    a_j, s_j = noise_level(sampler, model, target, x0_pred)
    eps_pred = (x_i.to(x0_pred) - a_i * x0_pred) / s_i
    x_j = a_j * x0_pred + s_j * eps_pred
    return (x_j - s_j * eps.to(x_j)) / a_j


class DirectAlign(EstimatorBase):
    """inject_range: [lo, hi], positions i/T (0 = pure noise, 1 = clean) of the steps the noise may be
    injected at; jump: sampler steps the one differentiable step spans (i + jump <= T; T is the clean end);
    discount: [noisiest, cleanest] loss weights over the injection range; positive / negative: SRP control
    words (both or neither); srp_k: [noisiest, cleanest] SRP weights k."""

    def __init__(
        self,
        inject_range: list[float] | None = None,
        jump: int = 1,
        discount: list[float] | None = None,
        positive: str | list[str] | None = None,
        negative: str | list[str] | None = None,
        srp_k: list[float] | None = None,
    ) -> None:
        self.inject_range = _pair(
            "inject_range", [0.1, 0.5] if inject_range is None else inject_range, 0.0, 1.0, ordered=True
        )
        if isinstance(jump, bool) or not isinstance(jump, int) or jump < 1:
            raise ConfigError(
                f"estimator.jump must be a positive integer (sampler steps spanned by the differentiable "
                f"step; the clean end is reached when injection step + jump = sampler steps), got {jump!r}."
            )
        self.jump = jump
        self.discount = _pair("discount", [1.0, 1.0] if discount is None else discount)
        self.positive, self.negative = _words("positive", positive), _words("negative", negative)
        if (self.positive is None) != (self.negative is None):
            raise ConfigError(
                "estimator.positive and estimator.negative are the two halves of the semantic relative "
                "preference: give both (control words for the preferred and the rejected style) or neither."
            )
        self.srp_k = _pair("srp_k", [0.25, 0.1] if srp_k is None else srp_k)

    def __repr__(self) -> str:
        srp = (
            f", positive={list(self.positive)}, negative={list(self.negative)}, srp_k={list(self.srp_k)}"
            if self.positive
            else ""
        )
        return (
            f"DirectAlign(inject_range={list(self.inject_range)}, jump={self.jump}, "
            f"discount={list(self.discount)}{srp})"
        )

    def candidates(self, num_steps: int) -> list[int]:
        """The injection steps: i/T inside ``inject_range`` and i + jump <= T."""
        lo, hi = self.inject_range
        return [i for i in range(num_steps) if lo <= i / num_steps <= hi and i + self.jump <= num_steps]

    def differentiated_steps(self, num_steps: int) -> range | None:
        steps = self.candidates(num_steps)
        return range(steps[0], steps[-1] + 1) if steps else None

    def check(self, sampler) -> None:
        inner = unwrapped(sampler)
        for member in ("add_noise", "predict_x0"):
            own = getattr(type(inner), member, None)
            if not callable(getattr(inner, member, None)) or own is getattr(SamplerBase, member):
                raise ConfigError(
                    f"estimator 'direct-align' re-noises the finished sample and predicts x0 from it in one step, "
                    f"so it needs a sampler with add_noise and predict_x0 (ddim, ddpm, euler, flow-sde), got {sampler!r}."
                )
        if not self.candidates(sampler.num_steps):
            raise ConfigError(
                f"estimator.inject_range={list(self.inject_range)} with jump={self.jump} leaves no injection step among "
                f"sampler.steps={sampler.num_steps} (step i qualifies when lo <= i/{sampler.num_steps} <= hi and "
                f"i + jump <= {sampler.num_steps}); widen the range, lower jump, or use more sampler steps."
            )

    def _position(self, step: int, num_steps: int) -> float:
        """Where ``step`` lies in ``inject_range``: 0 at its noisiest end, 1 at its cleanest."""
        lo, hi = self.inject_range
        return 0.0 if hi == lo else min(max((step / num_steps - lo) / (hi - lo), 0.0), 1.0)

    def _draw(self, options: tuple[str, ...], generator: torch.Generator) -> str:
        return options[int(torch.randint(len(options), (1,), generator=generator).item())]

    def score(
        self, inputs: StepInputs, images: torch.Tensor, position: float
    ) -> tuple[torch.Tensor, dict[str, float], int]:
        """[B] rewards of ``images`` (the SRP combination when control words are given), logs and queries."""
        prompts = list(inputs.cond.prompts)
        if self.positive is None or self.negative is None:
            return inputs.reward(images, prompts), {}, 1
        if not as_reward(inputs.reward).uses_prompts:
            raise ConfigError(
                f"estimator 'direct-align' was given control words (positive/negative: semantic relative preference), "
                f"which compare the reward under two prompts, but the reward {inputs.reward!r} does not read prompts; "
                f"use a prompt-reading reward (clip, pickscore, hpsv2, imagereward, ...) or drop positive/negative."
            )
        pos, neg = self._draw(self.positive, inputs.generator), self._draw(self.negative, inputs.generator)
        k = self.srp_k[0] + (self.srp_k[1] - self.srp_k[0]) * position
        r_pos = inputs.reward(images, [f"{pos}. {p}" for p in prompts])
        r_neg = inputs.reward(images, [f"{neg}. {p}" for p in prompts])
        logs = {
            "reward_positive": r_pos.detach().mean().item(),
            "reward_negative": r_neg.detach().mean().item(),
            "srp_k": k,
        }
        return (1 + k) * r_pos - r_neg, logs, 2

    def __call__(self, inputs: StepInputs) -> EstimatorOutput:
        sampler, model = inputs.sampler, inputs.model
        self.check(sampler)
        T = sampler.num_steps
        options = self.candidates(T)
        step = options[int(torch.randint(len(options), (1,), generator=inputs.generator).item())]
        with torch.no_grad():
            x0 = sampler.sample(model, inputs.cond, inputs.noise, generator=inputs.generator)
            x_i = sampler.add_noise(model, x0, inputs.noise, step)
        x0_hat = recover(sampler, model, x_i, inputs.noise, step, step + self.jump, inputs.cond)
        images = model.decode(x0_hat)
        position = self._position(step, T)
        reward, logs, queries = self.score(inputs, images, position)
        weight = self.discount[0] + (self.discount[1] - self.discount[0]) * position
        (a_i, s_i), (a_j, s_j) = (noise_level(sampler, model, k, x0) for k in (step, step + self.jump))
        # λ: how much of the finished sample the recovered image holds; the gradient is (1 − λ) times ReFL's.
        logs.update({"inject_step": float(step), "discount": weight, "lambda": float((s_j * a_i) / (a_j * s_i))})
        return EstimatorOutput(
            loss=-weight * reward.mean(), reward=reward.detach(), images=images.detach(), queries=queries, logs=logs
        )
