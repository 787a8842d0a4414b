"""The optional members of each plugin kind, with their defaults, in one place.

``RewardBase``, ``EstimatorBase`` and ``SamplerBase`` implement the protocols of
``draft_core.plugins.protocols`` and declare every optional member the core reads, with the
value that holds for a plugin without it. Built-in plugins derive from them; an outside plugin
may (and gets the defaults), but need not: ``as_reward``, ``as_estimator`` and ``as_sampler``
hand the core an object that has every member, wrapping a plain callable or a class without the
optional members in an adapter that delegates to it (as pluggy-based projects such as tox adapt
their plugins). The core reads the members directly from what these functions return; this module
is the one place that looks for a member a plugin may lack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from draft_core.plugins.protocols import Conditioning, EstimatorOutput, StepInputs

if TYPE_CHECKING:  # pragma: no cover
    from draft_core.models.pipeline import DiffusionModel

__all__ = ["EstimatorBase", "RewardBase", "SamplerBase", "as_estimator", "as_reward", "as_sampler", "wraps_estimator"]

T = TypeVar("T")


class RewardBase:
    """A reward: ``reward(images [B, 3, H, W] in [0, 1], prompts) -> Tensor[B]`` (``Reward`` protocol)."""

    #: False for a black-box score without a gradient (only ddpo and grpo accept such a reward).
    differentiable: bool = True
    #: True when the score depends on the prompt (``draft score`` then asks for prompts).
    uses_prompts: bool = False

    #: Per-term values [B] of the last call, logged as ``reward/<name>`` (a weighted sum has them).
    last_terms: Mapping[str, torch.Tensor] = MappingProxyType({})

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def check_available(self) -> None:
        """Cheap: raise a ``DraftError`` naming missing weights and how to provide them (loads nothing)."""

    def to(self, device: torch.device | str) -> Any:
        """Move the reward's weights to ``device`` (once, when a run is set up)."""
        return self


class EstimatorBase:
    """A gradient estimator: ``estimator(StepInputs) -> EstimatorOutput`` (``GradientEstimator`` protocol)."""

    #: False for an estimator that uses only the reward's values (ddpo, grpo): it accepts black-box rewards.
    needs_reward_gradient: bool = True

    def __call__(self, inputs: StepInputs) -> EstimatorOutput:
        raise NotImplementedError

    def check(self, sampler: Any) -> None:
        """Raise ``ConfigError`` for a sampler the estimator cannot work with (before any model loads)."""

    def differentiated_steps(self, num_steps: int) -> range | None:
        """The sampling steps whose denoiser calls carry gradient; None: not declared (not judged)."""
        return None

    def on_optimizer_step(self, applied: bool) -> None:
        """Once per optimiser step: ``applied`` is True right after the LoRA's update, False when it was skipped."""

    def state_dict(self) -> dict[str, Any]:
        """The estimator's own training state (tensors and plain numbers), saved with every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (``draft train --resume``)."""


class SamplerBase:
    """A sampler (``Sampler`` protocol): ``num_steps``, ``sample``, ``predict_x0``, ``add_noise``."""

    num_steps: int = 0
    #: True for flow-matching samplers, False for diffusion ones; None: not declared (not checked).
    flow_matching: bool | None = None
    #: True when the steps draw noise (policy-gradient estimators need it).
    stochastic: bool = False
    #: The noise scale of a DDIM-style step (dpg needs 0); None: the sampler has no such parameter.
    eta: float | None = None
    #: The classifier-free guidance scale; None: the sampler does not guide.
    guidance_scale: float | None = None

    def sample(self, model: DiffusionModel, cond: Conditioning, noise: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def predict_x0(self, model: DiffusionModel, sample: torch.Tensor, step: int, cond: Conditioning) -> torch.Tensor:
        raise NotImplementedError

    def add_noise(self, model: DiffusionModel, x0: torch.Tensor, noise: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError


class _Adapter:
    """Delegates every attribute the base does not define (reads and writes) to the wrapped plugin."""

    _members: tuple[str, ...] = ()

    def __init__(self, inner: Any) -> None:
        object.__setattr__(self, "inner", inner)

    def __getattr__(self, name: str) -> Any:
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)  # e.g. a writable guidance_schedule belongs to the plugin

    def __repr__(self) -> str:
        return repr(self.inner)


def _value(name: str, default: Any) -> property:
    """An attribute: the plugin's own value, else the base's default."""
    return property(lambda self: getattr(self.inner, name, default))


def _method(name: str, default: Callable[..., Any]) -> Callable[..., Any]:
    """A method: the plugin's own where it has one, else the base's (which does what absence meant)."""

    def call(self: _Adapter, *args: Any, **kwargs: Any) -> Any:
        own = getattr(self.inner, name, None)
        return own(*args, **kwargs) if callable(own) else default(self, *args, **kwargs)

    call.__name__ = name
    return call


def _with_defaults(base: type, members: Sequence[str]) -> type:
    """An adapter class for ``base``'s kind, holding each optional member."""
    namespace: dict[str, Any] = {}
    for name in members:
        default = getattr(base, name)
        namespace[name] = _method(name, default) if callable(default) else _value(name, default)
    namespace["__call__"] = _method("__call__", base.__call__)
    return type(f"Adapted{base.__name__[:-4]}", (_Adapter, base), namespace)


_REWARD_MEMBERS = ("differentiable", "uses_prompts", "last_terms", "check_available", "to")
_ESTIMATOR_MEMBERS = (
    "needs_reward_gradient",
    "check",
    "differentiated_steps",
    "on_optimizer_step",
    "state_dict",
    "load_state_dict",
)
_SAMPLER_MEMBERS = (
    "num_steps",
    "flow_matching",
    "stochastic",
    "eta",
    "guidance_scale",
    "sample",
    "predict_x0",
    "add_noise",
)
AdaptedReward = _with_defaults(RewardBase, _REWARD_MEMBERS)
AdaptedEstimator = _with_defaults(EstimatorBase, _ESTIMATOR_MEMBERS)
AdaptedSampler = _with_defaults(SamplerBase, _SAMPLER_MEMBERS)


def _adapt(obj: Any, base: type[T], adapter: type) -> T:
    if isinstance(obj, base):
        return obj
    out: T = adapter(obj)
    return out


def as_reward(reward: Any) -> RewardBase:
    """``reward`` with every optional member (itself when it derives from ``RewardBase``)."""
    return _adapt(reward, RewardBase, AdaptedReward)


def as_estimator(estimator: Any) -> EstimatorBase:
    """``estimator`` with every optional member (itself when it derives from ``EstimatorBase``)."""
    return _adapt(estimator, EstimatorBase, AdaptedEstimator)


def as_sampler(sampler: Any) -> SamplerBase:
    """``sampler`` with every optional member (itself when it derives from ``SamplerBase``)."""
    return _adapt(sampler, SamplerBase, AdaptedSampler)


def unwrapped(plugin: Any) -> Any:
    """The plugin an adapter wraps (the object itself otherwise)."""
    return plugin.inner if isinstance(plugin, _Adapter) else plugin


def wraps_estimator(factory: Callable[..., Any]) -> bool:
    """Whether a registered estimator factory wraps another estimator (``wraps_estimator = True``, as ``kl``)."""
    return bool(getattr(factory, "wraps_estimator", False))
