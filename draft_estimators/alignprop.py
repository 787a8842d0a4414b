"""AlignProp's random truncation (Prabhudesai et al., 2023), as its released code does it.

For each sampling step i = 0 .. T-1 (0 starts from noise) a fresh cutoff c_i is drawn
uniformly from lo..hi; when i < c_i the step's noise prediction is detached (it carries
no gradient to the parameters), otherwise it keeps its gradient. The latents are never
detached, so the reward's gradient reaches every kept step through the scheduler's
update of all later steps (their ε held fixed where detached). Step i is kept with
probability P(c ≤ i) = (i − lo + 1)/(hi − lo + 1), clipped to [0, 1]: the kept steps are
a random, usually non-contiguous, set concentrated towards the end of the chain.

This differs from ``k_range`` (DRaFT-K with random K), which draws one K per training
step, detaches the latent x_K and differentiates exactly the last K steps.
"""

from __future__ import annotations

import torch

from draft_core.errors import ConfigError
from draft_core.memory import run as checkpointed


def check_range(value, steps: int | None = None) -> tuple[int, int]:
    """[lo, hi] with 0 <= lo <= hi (<= steps, and lo < steps so that some step can be kept)."""
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ok or not 0 <= value[0] <= value[1]:
        raise ConfigError(
            f"estimator.alignprop_range must be [lo, hi] with 0 <= lo <= hi <= sampler steps (AlignProp's "
            f"truncated_backprop_minmax; a step i keeps its gradient when i >= a cutoff drawn from lo..hi), got {value!r}."
        )
    if steps is not None and (value[1] > steps or value[0] >= steps):
        raise ConfigError(
            f"estimator.alignprop_range={list(value)} does not fit sampler.steps={steps}: use 0 <= lo <= hi <= {steps} "
            f"with lo < {steps} (a cutoff of {steps} detaches every step)."
        )
    return int(value[0]), int(value[1])


def draw_kept(lo: int, hi: int, steps: int, generator: torch.Generator) -> list[bool]:
    """One cutoff per sampling step; step i keeps its gradient when i >= its cutoff."""
    cutoffs = torch.randint(lo, hi + 1, (steps,), generator=generator).tolist()
    return [i >= c for i, c in enumerate(cutoffs)]


def sample_with_kept_steps(
    sampler,
    model,
    cond,
    noise: torch.Tensor,
    kept: list[bool],
    generator: torch.Generator | None,
    checkpoint: bool,
    detach_inputs: bool = False,
) -> torch.Tensor:
    """x0 [B, C, h, w] from ``noise``, differentiable through the steps in ``kept`` only.

    Runs the sampler's own pieces (``action``, ``transition``, ``draw_step_noise``): a kept
    step's guided model output is computed with autograd (checkpointed: only its input is
    kept), a detached one without; the latent chain stays differentiable throughout.
    detach_inputs: the model sees stop_grad(x) at every step (DRTune), so the gradient reaches
    a kept step through the scheduler's updates only, never through a network's input-Jacobian.
    """
    x = sampler.initial_sample(model, noise)
    for i, keep in enumerate(kept):
        step_noise = sampler.draw_step_noise(x, generator)
        x_in = x.detach() if detach_inputs else x
        if not keep:
            with torch.no_grad():
                out = sampler.action(model, x_in, i, cond)
        elif checkpoint:
            out = checkpointed(sampler.action, model, x_in, i, cond)
        else:
            out = sampler.action(model, x_in, i, cond)
        x = sampler.transition(model, x, i, out, step_noise)
    return x
