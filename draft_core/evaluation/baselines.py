"""Ways to generate an image for a prompt: plain sampling and the paper's baselines (Appendix A.3).

Every method turns (model, sampler, prompts, initial noise) into images, so ``draft sample``
and ``draft eval`` run them all through one call:

- ``plain``: the sampler, once.
- ``best-of-n`` (n=16): n samples per prompt from the model, keep the one the reward
  scores highest (the paper's "re-ranking, best of 16").
- ``doodl``: optimise the initial noise x_T for the reward with Adam, backpropagating
  through the whole sampling chain with per-step gradient checkpointing, and
  renormalising x_T to the norm of a Gaussian sample (sqrt(numel)) after every update
  (DOODL, Wallace et al. 2023, as the paper ran it: 20 Adam steps).
- ``prompt-template``: prompt engineering; the model sees the template filled with the
  prompt, the reward still judges against the original prompt.

Candidates come from a ``NoiseSource``: ``noise(k)`` is the k-th initial noise of the batch,
and candidate 0 is what ``plain`` uses, so best-of-n never scores below plain for the
reward it selects with.

Method specs on the command line: ``NAME[:key=value[,key=value...]]``, e.g.
``best-of-n:n=16``, ``doodl:steps=20,lr=0.05``, ``prompt-template:template=a photo of a {}``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from draft_core.errors import ConfigError, did_you_mean
from draft_core.rewarding.gradient import is_differentiable

PAPER_TEMPLATE = "A stunning beautiful oil painting of a {}, cinematic lighting, golden hour light."


@dataclass
class Generated:
    """images: [B, 3, H, W] in [0, 1]; info: what the method wants to report (scores, costs)."""

    images: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


class NoiseSource:
    """Initial noise per candidate: ``source(k)`` -> [B, C, h, w], the same tensor each time it is asked for k.

    ``first``: candidate 0 (as drawn by the caller); ``draw(k)``: candidate k >= 1.
    """

    def __init__(self, first: torch.Tensor, draw: Callable[[int], torch.Tensor]) -> None:
        self._cache = {0: first}
        self._draw = draw

    def __call__(self, k: int) -> torch.Tensor:
        if k not in self._cache:
            self._cache[k] = self._draw(k)
        return self._cache[k]

    @classmethod
    def per_item(cls, model, seeds: Sequence[int]) -> NoiseSource:
        """Item i's candidates are the successive draws of a generator seeded with ``seeds[i]``, so an
        item's images do not depend on which other items share its batch."""
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        drawn: list[list[torch.Tensor]] = [[] for _ in seeds]

        def draw(k: int) -> torch.Tensor:
            for g, items in zip(gens, drawn):
                while len(items) <= k:
                    items.append(model.make_noise(1, g))
            return torch.cat([items[k] for items in drawn])

        return cls(draw(0), draw)

    @classmethod
    def from_generator(cls, first: torch.Tensor, model, generator: torch.Generator) -> NoiseSource:
        """Candidate 0 given; later candidates drawn from ``generator`` in order (``draft sample``)."""
        return cls(first, lambda k: model.make_noise(first.shape[0], generator))


class Method:
    """Base class: ``generate`` returns images for ``prompts``; ``needs_reward`` methods get one."""

    name = "plain"
    needs_reward = False

    def __init__(self, reward=None) -> None:
        self.reward = reward
        # Rewrites encoded prompts before sampling, e.g. a learned negative prompt
        # (draft_core.training.learned_sampling.LearnedSampling.condition); None leaves them as they are.
        self.condition = None

    @property
    def label(self) -> str:
        return self.name

    def encode(self, model, prompts: Sequence[str]):
        cond = model.encode_prompts(list(prompts))
        return cond if self.condition is None else self.condition(cond)

    def generate(
        self, model, sampler, prompts: Sequence[str], noise: NoiseSource, *, lora_steps=None, generator=None
    ) -> Generated:
        cond = self.encode(model, prompts)
        return Generated(sample_images(model, sampler, cond, noise(0), lora_steps, generator))


def _reward_on(reward, like: torch.Tensor):
    """The reward on the device of ``like`` (rewards that are modules move; others place themselves)."""
    if isinstance(reward, torch.nn.Module):
        reward.to(like.device)
    return reward


@torch.no_grad()
def sample_images(model, sampler, cond, x_T: torch.Tensor, lora_steps=None, generator=None) -> torch.Tensor:
    """One pass of the sampler from x_T, decoded: [B, 3, H, W] in [0, 1]."""
    return model.decode(sampler.sample(model, cond, x_T, lora_steps=lora_steps, generator=generator))


class Plain(Method):
    """Sample once."""


class BestOfN(Method):
    """Sample n candidates per prompt; keep the highest-reward one (first one on ties, as argmax)."""

    name = "best-of-n"
    needs_reward = True

    def __init__(self, reward=None, n: int = 16) -> None:
        super().__init__(reward)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"best-of-n: n must be a positive integer, got {n!r}.")
        self.n = n

    @property
    def label(self) -> str:
        return f"best-of-{self.n}"

    def generate(self, model, sampler, prompts, noise, *, lora_steps=None, generator=None) -> Generated:
        cond = self.encode(model, prompts)
        best, best_scores, scores = None, None, []
        for k in range(self.n):
            images = sample_images(model, sampler, cond, noise(k), lora_steps, generator)
            with torch.no_grad():
                s = _reward_on(self.reward, images)(images, list(prompts)).detach().float().cpu()
            scores.append(s)
            if best is None:
                best, best_scores = images.clone(), s.clone()
                continue
            better = s > best_scores  # strict: the earliest candidate wins ties, like argmax
            best[better.to(best.device)] = images[better.to(images.device)]
            best_scores = torch.where(better, s, best_scores)
        table = torch.stack(scores, dim=1)  # [B, n]
        return Generated(best, {"candidate_scores": table, "choice": table.argmax(dim=1), "sampler_passes": self.n})


class DOODL(Method):
    """Adam on x_T through the full sampling chain (checkpointed), x_T renormalised after each update."""

    name = "doodl"
    needs_reward = True

    def __init__(self, reward=None, steps: int = 20, lr: float = 0.05, checkpoint: bool = True) -> None:
        super().__init__(reward)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"doodl: steps must be a non-negative integer, got {steps!r}.")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ConfigError(f"doodl: lr must be a positive number, got {lr!r}.")
        if reward is not None and not is_differentiable(reward):
            raise ConfigError(
                f"doodl backpropagates the reward into the initial noise, but {reward!r} has no gradient "
                "(it declares differentiable = False); use best-of-n with it, or a differentiable reward."
            )
        self.steps, self.lr, self.checkpoint = steps, float(lr), bool(checkpoint)

    @property
    def label(self) -> str:
        return f"doodl-{self.steps}"

    def generate(self, model, sampler, prompts, noise, *, lora_steps=None, generator=None) -> Generated:
        prompts = list(prompts)
        t0 = time.perf_counter()
        with torch.no_grad():
            cond = self.encode(model, prompts)
        reward = _reward_on(self.reward, cond.cond)
        x_T = noise(0).detach().float().clone().requires_grad_(True)
        norm = math.sqrt(x_T[0].numel())  # E|z| of a standard Gaussian sample, to first order
        opt = torch.optim.Adam([x_T], lr=self.lr)
        # Stochastic samplers draw the same step noise in every iteration: DOODL optimises one chain.
        state = generator.get_state() if generator is not None else None

        def run(grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
            if state is not None:
                generator.set_state(state)
            kwargs = dict(grad_from=0, checkpoint=self.checkpoint) if grad else {}
            x = sampler.sample(
                model, cond, x_T if grad else x_T.detach(), lora_steps=lora_steps, generator=generator, **kwargs
            )
            images = model.decode(x)
            return images, reward(images, prompts)

        history = []
        with torch.enable_grad():
            for _ in range(self.steps):
                _, r = run(grad=True)
                history.append(r.detach().float().cpu())
                # Only x_T needs a gradient (not LoRA or reward weights that may require grad).
                (x_T.grad,) = torch.autograd.grad(-r.sum(), [x_T])
                opt.step()
                with torch.no_grad():
                    x_T.mul_(norm / x_T.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x_T.dim() - 1)))
        with torch.no_grad():
            images, r = run(grad=False)
        history.append(r.detach().float().cpu())
        info = {
            "reward_history": torch.stack(history),  # [steps + 1, B]: before each update, then final
            "x_T": x_T.detach(),
            "seconds": time.perf_counter() - t0,
            "sampler_passes": 2 * self.steps + 1,  # forward + checkpointed backward per step (recompute not counted)
        }
        return Generated(images.detach(), info)


class PromptTemplate(Method):
    """The model sees ``template.format(prompt)``; rewards judge the original prompt."""

    name = "prompt-template"

    def __init__(self, reward=None, template: str = PAPER_TEMPLATE) -> None:
        super().__init__(reward)
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ConfigError(
                f"prompt-template: template must contain '{{}}' exactly once (where the prompt goes), got {template!r}."
            )
        self.template = template

    def generate(self, model, sampler, prompts, noise, *, lora_steps=None, generator=None) -> Generated:
        shown = [self.template.format(p) for p in prompts]
        out = super().generate(model, sampler, shown, noise, lora_steps=lora_steps, generator=generator)
        out.info["model_prompts"] = shown
        return out


METHODS: dict[str, type[Method]] = {
    "plain": Plain,
    "best-of-n": BestOfN,
    "doodl": DOODL,
    "prompt-template": PromptTemplate,
}

_PAIR_SPLIT = re.compile(r",(?=\s*[A-Za-z_][\w-]*=)")  # a comma starts a new pair only before "key="


def _value(text: str):
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) and value is not None else text


def parse_spec(text: str, what: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:key=value[,key=value...]]`` -> (name, kwargs); values are read as YAML scalars."""
    name, _, rest = text.partition(":")
    kwargs: dict[str, Any] = {}
    if rest:
        for pair in _PAIR_SPLIT.split(rest):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise ConfigError(
                    f"{what} '{text}': '{pair}' is not key=value. Write {what} NAME:key=value[,key=value...] (e.g. best-of-n:n=16)."
                )
            kwargs[key.strip()] = _value(value)
    return name.strip(), kwargs


def build_method(text: str, reward=None) -> Method:
    """A method from its spec; ``reward`` is the one best-of-n and DOODL select or optimise with."""
    name, kwargs = parse_spec(text, "--method")
    if name not in METHODS:
        raise ConfigError(f"unknown --method '{name}'. Methods: {', '.join(METHODS)}.{did_you_mean(name, METHODS)}")
    cls = METHODS[name]
    if cls.needs_reward and reward is None:
        raise ConfigError(
            f"--method {name} needs a reward to select or optimise with: add --reward NAME[:key=value,...] (e.g. --reward digit-classifier:target=8)."
        )
    try:
        return cls(reward, **kwargs)
    except TypeError as exc:
        import inspect

        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "reward")]
        raise ConfigError(f"--method '{text}': {exc}. {name} accepts {accepted or 'no arguments'}.") from None


def build_reward(text: str, registry=None):
    """A registered reward from ``NAME[:key=value,...]`` (e.g. ``digit-classifier:target=8``)."""
    from draft_core.errors import DraftError
    from draft_core.plugins import load_registry
    from draft_core.rewarding.contract import checked_reward

    name, kwargs = parse_spec(text, "--reward")
    registry = registry or load_registry()
    try:  # called as training calls it: behind the core's input and output checks
        return checked_reward(registry.build("reward", name, **kwargs), registry.get("reward", name).describe())
    except DraftError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"--reward '{text}': reward '{name}' rejected its arguments {kwargs}: {exc}") from exc
